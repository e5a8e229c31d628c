import { test } from 'node:test';
import assert from 'node:assert/strict';
import { handler } from './app.js';

const task = (params) => ({ taskId: 't', jobId: 'j', taskType: 'copy_file_js', params: JSON.stringify(params) });

test('the input must be named', () => {
  assert.throws(() => handler.execute(task({ input: 3 })), (e) => e.payload.kind === 'invalid-input');
});

test('object calls fail outside the worker host with the host\'s message', () => {
  assert.throws(() => handler.execute(task({ input: 'in.bin' })),
    (e) => e.payload.kind === 'permanent' && e.payload.message.includes('worker host'));
});

test('it describes copy_file_js', () => {
  assert.deepEqual(handler.describe().map((s) => s.name), ['copy_file_js']);
});
