// copy_task in JavaScript: copies one of the job's files (an s3:// URI or a
// name) to the job's output `output`, streaming through the `objects`
// interface (needs the `[objects]` grant: read, write). Result: the bytes
// copied and the copy's URI, which the worker names in `data_metadata`.
import { log } from 'taskworker:plugin/host@0.1.0';
import { open, create } from 'taskworker:plugin/objects@0.1.0';

/** A failure the orchestrator's retry rules understand. */
class TaskFailure {
  constructor(kind, message) {
    this.payload = { kind, message, details: undefined };
  }
}

// An object call's error (the host's message) fails the task for good.
function objectCall(what, fn) {
  try {
    return fn();
  } catch (e) {
    const message = typeof e?.payload === 'string' ? e.payload : `${e?.message ?? e}`;
    throw new TaskFailure('permanent', `${what}: ${message}`);
  }
}

function copy(params) {
  const { input, output = 'copy_js.bin' } = params;
  if (typeof input !== 'string' || typeof output !== 'string') {
    throw new TaskFailure('invalid-input', 'copy_task params: `input` and `output` must be strings');
  }
  const reader = objectCall('open', () => open(input));
  const writer = objectCall('create', () => create(output));
  let size = 0;
  for (;;) {
    const chunk = objectCall('read', () => reader.read(1 << 20));
    if (chunk.length === 0) break;
    objectCall('write', () => writer.write(chunk));
    size += chunk.length;
  }
  const info = objectCall('finish', () => writer.finish());
  log('info', `copied ${size} bytes to ${info.uri} (javascript)`);
  return { size, input_size: Number(reader.size()), copy: info.uri };
}

export const handler = {
  describe() {
    return [{
      name: 'copy_file_js',
      version: '1.0.0',
      description: 'Copies one of the job\'s files to an output of the job (JavaScript)',
      inputSchema: JSON.stringify({
        type: 'object',
        required: ['input'],
        properties: { input: { type: 'string' }, output: { type: 'string' } },
      }),
      outputSchema: undefined,
      outputStatuses: [],
    }];
  },

  execute(task) {
    let params;
    try {
      params = JSON.parse(task.params);
    } catch (e) {
      throw new TaskFailure('invalid-input', `${task.taskType} params: ${e.message}`);
    }
    try {
      return { status: 'success', data: JSON.stringify(copy(params)) };
    } catch (e) {
      if (e instanceof TaskFailure) throw e;
      throw new TaskFailure('permanent', `${e && e.name}: ${e && e.message}`);
    }
  },
};
