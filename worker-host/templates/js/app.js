// {{name}}: a task plugin in JavaScript (componentize-js).
//
// Test:  node --import ./sdk/test-host.mjs --test
// Build: ./build.sh    (→ {{name}}.wasm)
// Try:   worker-host run {{name}}.wasm --params '{"name": "World"}'
import { log, progress } from 'taskworker:plugin/host@0.1.0';

/** A failure the orchestrator's retry rules understand: kind is
 * 'transient', 'permanent', 'invalid-input', 'dependency', … */
class TaskFailure {
  constructor(kind, message) {
    this.payload = { kind, message, details: undefined };
  }
}

function run(params) {
  const { name } = params;
  if (typeof name !== 'string' || !name.trim()) {
    throw new TaskFailure('invalid-input', '{{name}} params: `name` must be a non-empty string');
  }
  log('info', `greeting ${name}`);
  progress(1.0, 'done');
  return { text: `Hello, ${name}!` };
}

export const handler = {
  describe() {
    return [{
      name: '{{name}}',
      version: '0.1.0',
      description: 'Greets `name`',
      inputSchema: JSON.stringify({ type: 'object', required: ['name'], properties: { name: { type: 'string' } } }),
      outputSchema: undefined,
      outputStatuses: [],
    }];
  },
  execute(task) {
    let params;
    try {
      params = JSON.parse(task.params);
    } catch (e) {
      throw new TaskFailure('invalid-input', `{{name}} params: ${e.message}`);
    }
    try {
      return { status: 'success', data: JSON.stringify(run(params)) };
    } catch (e) {
      if (e instanceof TaskFailure) throw e;
      throw new TaskFailure('permanent', `${e && e.name}: ${e && e.message}`);
    }
  },
};
