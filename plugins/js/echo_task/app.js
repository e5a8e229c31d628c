// echo_task in JavaScript: repeats `message` `multiply` times, space-separated
// (as the Rust echo_task; `work_ms` is refused: a JS component cannot sleep
// without busy-waiting, and a plugin that burns CPU to wait is a bad example).
import { log, progress } from 'taskworker:plugin/host@0.1.0';

const MAX_MULTIPLY = 10000;

/** A failure the orchestrator's retry rules understand. */
class TaskFailure {
  constructor(kind, message, details) {
    // jco's convention: a thrown object's `payload` is the result's error.
    this.payload = { kind, message, details: details === undefined ? undefined : JSON.stringify(details) };
  }
}
const invalidInput = (message) => new TaskFailure('invalid-input', message);

function echo(params) {
  const { message, multiply = 1, work_ms: workMs = 0 } = params;
  if (typeof message !== 'string') throw invalidInput('echo_task params: `message` must be a string');
  if (!Number.isInteger(multiply) || multiply < 0 || multiply > MAX_MULTIPLY) {
    throw invalidInput(`echo_task params: \`multiply\` must be an integer in 0..=${MAX_MULTIPLY}`);
  }
  if (workMs !== 0) throw invalidInput('echo_task params: `work_ms` is not supported by the JavaScript echo');
  log('info', `processing message ${JSON.stringify(message)} x${multiply} (javascript)`);
  progress(1.0, 'done');
  // processed_message last: avtomatika takes a result's last key as the job's `result`.
  return {
    multiplied_by: multiply,
    original_message: message,
    processed_message: Array(multiply).fill(message).join(' '),
  };
}

const SKILLS = {
  echo_task: {
    run: echo,
    version: '1.0.0',
    description: 'Repeats `message` `multiply` times, space-separated (JavaScript)',
    inputSchema: {
      type: 'object',
      required: ['message'],
      properties: {
        message: { type: 'string' },
        multiply: { type: 'integer', minimum: 0, maximum: MAX_MULTIPLY },
      },
    },
  },
};

export const handler = {
  describe() {
    return Object.entries(SKILLS).map(([name, s]) => ({
      name,
      version: s.version,
      description: s.description,
      inputSchema: JSON.stringify(s.inputSchema),
      outputSchema: undefined,
      outputStatuses: [],
    }));
  },

  execute(task) {
    const skill = SKILLS[task.taskType];
    if (!skill) throw invalidInput(`this plugin does not serve ${JSON.stringify(task.taskType)}`);
    let params;
    try {
      params = JSON.parse(task.params);
    } catch (e) {
      throw invalidInput(`${task.taskType} params: ${e.message}`);
    }
    try {
      return { status: 'success', data: JSON.stringify(skill.run(params)) };
    } catch (e) {
      if (e instanceof TaskFailure) throw e;
      throw new TaskFailure('permanent', `${e && e.name}: ${e && e.message}`);
    }
  },
};

// For the plugin's own tests under Node (`node --test`): the skills as functions.
export const skills = SKILLS;
