// For a JavaScript plugin's own tests under Node:
//   node --import ../sdk/test-host.mjs --test
// stands in for the worker host's imports (`taskworker:plugin/host@0.1.0`,
// `taskworker:plugin/objects@0.1.0`):
// log and progress print to stderr, object calls fail as outside a worker.
import { register } from 'node:module';

register('./host-hooks.mjs', import.meta.url);
