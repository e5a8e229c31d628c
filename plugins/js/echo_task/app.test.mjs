import { test } from 'node:test';
import assert from 'node:assert/strict';
import { handler } from './app.js';

const task = (params) => ({ taskId: 't', jobId: 'j', taskType: 'echo_task', params: JSON.stringify(params) });

test('the scenario message is repeated', () => {
  const out = handler.execute(task({ message: 'Hello World', multiply: 3 }));
  assert.equal(out.status, 'success');
  assert.equal(JSON.parse(out.data).processed_message, 'Hello World Hello World Hello World');
});

test('bad params are invalid input', () => {
  assert.throws(() => handler.execute(task({ message: 'x', multiply: 'three' })),
    (e) => e.payload.kind === 'invalid-input');
});

test('it describes echo_task', () => {
  assert.deepEqual(handler.describe().map((s) => s.name), ['echo_task']);
});
