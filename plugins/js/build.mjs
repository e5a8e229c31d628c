// Builds a JavaScript plugin into a component:
//   node build.mjs <plugin dir> <out.wasm> [<plugin.wit>]
// componentize-js 0.23 with preview2-shim 0.26.1 pinned (package.json); the
// WIT is passed as a string, and the `http` and `fetch-event` features are
// disabled (plugins reach the network only through grants, not fetch()).
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const [dir, out, witFile] = process.argv.slice(2);
if (!dir || !out) {
  console.error('usage: node build.mjs <plugin dir> <out.wasm> [<plugin.wit>]');
  process.exit(2);
}
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const source = await readFile(join(dir, 'app.js'), 'utf8');
const wit = await readFile(witFile || join(root, 'wit', 'plugin.wit'), 'utf8');
const { component } = await componentize(source, wit, {
  worldName: 'task-plugin',
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
console.log(`built ${out} (${component.byteLength} bytes)`);
