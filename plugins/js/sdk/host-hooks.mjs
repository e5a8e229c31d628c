// Module resolution hook for test-host.mjs.
const HOST = `
export function log(level, message) { console.error('[' + level + '] ' + message); }
export function progress(fraction, message) { console.error('[progress ' + Math.round(fraction * 100) + ' %] ' + message); }
`;

export async function resolve(specifier, context, next) {
  if (specifier.startsWith('taskworker:plugin/host')) {
    return { url: `data:text/javascript,${encodeURIComponent(HOST)}`, shortCircuit: true };
  }
  return next(specifier, context);
}
