import { test } from 'node:test';
import assert from 'node:assert/strict';
import { handler } from './app.js';

const task = (params) => ({ taskId: 't', jobId: 'j', taskType: '{{name}}', params: JSON.stringify(params) });

test('it greets', () => {
  const out = handler.execute(task({ name: 'World' }));
  assert.equal(JSON.parse(out.data).text, 'Hello, World!');
});

test('bad params are invalid input', () => {
  assert.throws(() => handler.execute(task({ name: 7 })), (e) => e.payload.kind === 'invalid-input');
});
