// Module resolution hook for test-host.mjs.
const HOST = `
export function log(level, message) { console.error('[' + level + '] ' + message); }
export function progress(fraction, message) { console.error('[progress ' + Math.round(fraction * 100) + ' %] ' + message); }
`;
// Object calls throw as the component's imports do on an error result:
// an error whose payload is the host's message.
const OBJECTS = `
const outside = () => { const e = new Error('objects'); e.payload = 'objects are only available to a plugin run by the worker host'; throw e; };
export function open(uri) { outside(); }
export function create(name) { outside(); }
`;

export async function resolve(specifier, context, next) {
  if (specifier.startsWith('taskworker:plugin/host')) {
    return { url: `data:text/javascript,${encodeURIComponent(HOST)}`, shortCircuit: true };
  }
  if (specifier.startsWith('taskworker:plugin/objects')) {
    return { url: `data:text/javascript,${encodeURIComponent(OBJECTS)}`, shortCircuit: true };
  }
  return next(specifier, context);
}
