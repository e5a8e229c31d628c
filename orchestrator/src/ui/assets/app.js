// The orchestrator's dashboard: a page per hash route, every figure read
// from the client API (signed in by the session cookie), live by
// Server-Sent Events. Text from the server is only ever set as text
// (textContent), never parsed as HTML.
'use strict';

const API = '/api/v1';
const PAGE_SIZE = 20;
const STATUSES = ['scheduled', 'pending', 'waiting_for_worker', 'running', 'awaiting_retry',
  'waiting_for_parallel_tasks', 'waiting_for_sub_job', 'waiting_for_human', 'waiting_for_signal',
  'sleeping', 'finished', 'failed', 'quarantined', 'cancelled'];
const ENDED = new Set(['finished', 'failed', 'quarantined', 'cancelled']);
const main = document.getElementById('main');

// ---------------------------------------------------------------- helpers

/** An element: h('a', {href: '#'}, 'text', child…). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** Calls the API; throws an Error carrying the server's message and status. */
async function api(path, options = {}) {
  const headers = { 'X-Requested-With': 'taskworker-dashboard' };
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method: options.method || 'GET',
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    credentials: 'same-origin',
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const e = new Error(body.error || `${response.status} ${response.statusText}`);
    e.status = response.status;
    throw e;
  }
  return body;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}

function took(from, to) {
  if (!from || !to) return '—';
  return duration(new Date(to) - new Date(from));
}

function duration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

function statusBadge(status) {
  return h('span', { class: `status ${status}`, 'data-status': status }, status.replace(/_/g, ' '));
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

/** Runs `f` at most once per `ms`, the last call winning. */
function throttle(f, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; f(); }, ms);
  };
}

/** Parses `#/a/b?x=1` into {parts: ['a','b'], query: URLSearchParams}. */
function route() {
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query || '') };
}

// ---------------------------------------------------------------- sign-in

let signedInAs = null;
let cleanup = () => {};

async function start() {
  try {
    signedInAs = (await api('/ui/session')).client;
  } catch (e) {
    signedInAs = null;
  }
  window.addEventListener('hashchange', render);
  document.getElementById('sign-out').addEventListener('click', signOut);
  render();
}

function showSignIn(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('sign-out').hidden = true;
  document.getElementById('who').textContent = '';
  const token = h('input', { id: 'token', type: 'password', autocomplete: 'current-password', placeholder: 'Client token', required: true });
  const error = h('p', { id: 'sign-in-error', class: 'error' }, message || '');
  const form = h('form', { class: 'card signin', id: 'sign-in-form' },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' }, 'Use a client token of this orchestrator. You will see the jobs of that client.'),
    token,
    h('button', { id: 'sign-in', class: 'primary', type: 'submit' }, 'Sign in'),
    error);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    try {
      signedInAs = (await api('/ui/session', { method: 'POST', body: { token: token.value } })).client;
      token.value = '';
      if (!location.hash || location.hash === '#/') location.hash = '#/jobs';
      render();
    } catch (e) {
      error.textContent = e.status === 401 || e.status === 403 ? 'Unknown token: nothing to show.' : e.message;
    }
  });
  main.replaceChildren(form);
  token.focus();
}

async function signOut() {
  await api('/ui/session', { method: 'DELETE' }).catch(() => {});
  signedInAs = null;
  render();
}

function render() {
  cleanup();
  cleanup = () => {};
  if (!signedInAs) return showSignIn();
  document.getElementById('nav').hidden = false;
  document.getElementById('sign-out').hidden = false;
  document.getElementById('who').textContent = `signed in as ${signedInAs}`;
  const { parts, query } = route();
  const page = parts[0] || 'jobs';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
  const pages = {
    jobs: () => (parts[1] ? jobPage(parts[1]) : jobsPage(query)),
    workers: workersPage,
    blueprints: blueprintsPage,
  };
  const show = pages[page] || jobsPage.bind(null, query);
  cleanup = show() || (() => {});
}

/** A page's data could not be read: a session that expired goes back to sign-in. */
function failed(e) {
  if (e.status === 401 || e.status === 403) {
    signedInAs = null;
    return showSignIn('Your sign-in has ended; sign in again.');
  }
  main.replaceChildren(h('p', { class: 'error', id: 'page-error' }, e.message));
}

/** An EventSource that is closed when the page changes. */
function stream(url, handlers) {
  const source = new EventSource(url, { withCredentials: true });
  for (const [name, f] of Object.entries(handlers)) {
    source.addEventListener(name, (ev) => f(ev.data ? JSON.parse(ev.data) : null));
  }
  return () => source.close();
}

// ---------------------------------------------------------------- jobs list

function jobsPage(query) {
  const status = query.get('status') || '';
  const blueprint = query.get('blueprint') || '';
  // Older pages are found by cursor: `after` is the `next` of the page
  // before, `page` only numbers the rows shown.
  const after = query.get('after') || '';
  const page = after ? Math.max(1, parseInt(query.get('page') || '1', 10) || 1) : 0;
  const go = (changes) => {
    const q = new URLSearchParams({ status, blueprint, page: String(page), after, ...changes });
    if (!q.get('after')) q.delete('page');
    for (const [k, v] of [...q]) if (!v || (k === 'page' && v === '0')) q.delete(k);
    location.hash = `#/jobs${q.toString() ? `?${q}` : ''}`;
  };

  const statusSelect = h('select', { id: 'filter-status', onchange: (e) => go({ status: e.target.value, page: '0', after: '' }) },
    h('option', { value: '' }, 'Any status'),
    STATUSES.map((st) => h('option', { value: st, selected: st === status }, st.replace(/_/g, ' '))));
  const blueprintSelect = h('select', { id: 'filter-blueprint', onchange: (e) => go({ blueprint: e.target.value, page: '0', after: '' }) },
    h('option', { value: '' }, 'Any blueprint'));
  const search = h('input', { id: 'search-id', placeholder: 'Job id', size: 38 });
  const searchError = h('span', { class: 'error', id: 'search-error' });
  const searchForm = h('form', { class: 'toolbar' }, search, h('button', { type: 'submit' }, 'Open'), searchError);
  searchForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const id = search.value.trim();
    searchError.textContent = '';
    try {
      await api(`${API}/jobs/${encodeURIComponent(id)}`);
      location.hash = `#/jobs/${encodeURIComponent(id)}`;
    } catch (e) {
      searchError.textContent = e.status === 404 ? `No job ${id} of yours` : e.message;
    }
  });

  const tbody = h('tbody', { id: 'jobs-body' });
  const table = h('table', { id: 'jobs' },
    h('thead', {}, h('tr', {}, ['Job', 'Blueprint', 'Status', 'State', 'Created', 'Took'].map((t) => h('th', {}, t)))),
    tbody);
  let older = null;
  const prev = h('button', { id: 'prev', disabled: page === 0, onclick: () => go({ page: '0', after: '' }) }, '← Newest');
  const next = h('button', { id: 'next', disabled: true, onclick: () => older && go({ page: String(page + 1), after: older }) }, 'Older →');
  const info = h('span', { class: 'muted', id: 'page-info' });
  const charts = liveCharts();

  main.replaceChildren(
    h('h1', {}, 'Jobs'),
    charts.element,
    h('div', { class: 'toolbar' }, statusSelect, blueprintSelect, h('span', { class: 'spacer' }), searchForm),
    table,
    h('div', { class: 'pager' }, prev, next, info));

  api(`${API}/blueprints`).then((list) => {
    for (const b of list) blueprintSelect.append(h('option', { value: b.name, selected: b.name === blueprint }, b.name));
  }).catch(() => {});

  const shown = new Map();
  const row = (job) => h('tr', { 'data-job-id': job.job_id || job.id },
    h('td', {}, h('a', { href: `#/jobs/${job.job_id || job.id}`, class: 'mono', title: job.job_id || job.id }, (job.job_id || job.id).slice(0, 8))),
    h('td', {}, job.blueprint),
    h('td', { class: 'cell-status' }, statusBadge(job.status)),
    h('td', { class: 'cell-state' }, job.current_state),
    h('td', {}, when(job.created_at)),
    h('td', { class: 'cell-took' }, ENDED.has(job.status) ? took(job.created_at, job.finished_at || job.updated_at) : '…'));

  const load = async () => {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (after) q.set('after', after);
    if (status) q.set('status', status);
    if (blueprint) q.set('blueprint', blueprint);
    try {
      const { jobs, next: cursor } = await api(`${API}/jobs?${q}`);
      older = cursor;
      shown.clear();
      tbody.replaceChildren(...jobs.map((j) => { const r = row(j); shown.set(j.id, r); return r; }));
      if (!jobs.length) tbody.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No jobs here yet.')));
      next.disabled = !cursor;
      info.textContent = jobs.length ? `${page * PAGE_SIZE + 1}–${page * PAGE_SIZE + jobs.length}` : '';
    } catch (e) {
      failed(e);
    }
  };
  const reload = throttle(load, 400);
  load();

  const matches = (u) => (!status || u.status === status) && (!blueprint || u.blueprint === blueprint);
  const stop = stream(`${API}/jobs/stream`, {
    job: (u) => {
      const r = shown.get(u.job_id);
      if (r && matches(u)) {
        r.replaceWith(row(u));
        shown.set(u.job_id, tbody.querySelector(`tr[data-job-id="${u.job_id}"]`));
      } else if (r || page === 0) {
        reload();
      }
    },
    lagged: reload,
  });
  return () => { stop(); charts.stop(); };
}

// ---------------------------------------------------------------- live charts

/** Throughput and latency of the last two minutes, from /stats/stream. */
function liveCharts() {
  const points = [];
  const keep = 120;
  const throughput = h('div', { class: 'card chart', id: 'chart-throughput' });
  const latency = h('div', { class: 'card chart', id: 'chart-latency' });
  const element = h('div', { class: 'grid2' }, throughput, latency);
  const draw = () => {
    drawChart(throughput, 'Jobs ended per second', points, [
      { key: 'finished', label: 'finished' },
      { key: 'failed', label: 'failed' },
      { key: 'cancelled', label: 'cancelled' },
    ], (v) => String(Math.round(v)));
    drawChart(latency, 'Latency, created → ended (ms)', points, [
      { key: 'latency_p50_ms', label: 'p50' },
      { key: 'latency_p95_ms', label: 'p95' },
    ], (v) => duration(v));
  };
  draw();
  const stop = stream(`${API}/stats/stream`, {
    stats: (p) => {
      points.push(p);
      if (points.length > keep) points.shift();
      draw();
    },
  });
  return { element, stop };
}

function drawChart(box, title, points, series, fmt) {
  const W = 520, H = 140, L = 44, B = 16;
  const values = points.flatMap((p) => series.map((x) => p[x.key]).filter((v) => v !== null && v !== undefined));
  const top = Math.max(1, ...values) * 1.1;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' });
  svg.append(s('line', { class: 'axis', x1: L, y1: H - B, x2: W, y2: H - B }));
  for (const f of [0, 0.5, 1]) {
    const y = H - B - f * (H - B - 6);
    svg.append(s('text', { class: 'tick', x: 2, y: y + 3 }, fmt(top * f)));
    svg.append(s('line', { class: 'axis', x1: L, y1: y, x2: W, y2: y }));
  }
  const n = 120;
  for (const x of series) {
    const coords = [];
    points.forEach((p, i) => {
      const v = p[x.key];
      if (v === null || v === undefined) return;
      const px = L + ((n - points.length + i) / (n - 1)) * (W - L);
      const py = H - B - (v / top) * (H - B - 6);
      coords.push(`${px.toFixed(1)},${py.toFixed(1)}`);
    });
    if (coords.length) svg.append(s('polyline', { class: `line s-${x.key}`, points: coords.join(' ') }));
    // Dots too: a period between two empty ones has no line to draw.
    for (const c of coords) {
      const [cx, cy] = c.split(',');
      svg.append(s('circle', { class: `dot s-${x.key}`, cx, cy, r: 2.2 }));
    }
    const total = points.reduce((sum, p) => sum + (p[x.key] || 0), 0);
    box.setAttribute(`data-total-${x.key}`, String(total));
  }
  const last = points[points.length - 1] || {};
  const legend = h('div', { class: 'legend' }, h('b', {}, title), ' · ',
    series.map((x, i) => [i ? ' · ' : '', h('span', { class: `swatch s-${x.key}` }, '■ '), `${x.label} `,
      h('b', { 'data-series': x.key }, last[x.key] === null || last[x.key] === undefined ? '—' : fmt(last[x.key]))]));
  box.replaceChildren(legend, svg);
}

// ---------------------------------------------------------------- one job

function jobPage(id) {
  const facts = h('dl', { class: 'facts', id: 'job-facts' });
  const progress = h('div', { id: 'progress', hidden: true }, h('div', { class: 'progress' }, h('div', {})), h('span', { class: 'muted' }));
  const cancel = h('button', { id: 'cancel', class: 'danger', hidden: true }, 'Cancel job');
  const cancelError = h('span', { class: 'error', id: 'cancel-error' });
  const data = h('div', { class: 'grid2' });
  const timeline = h('ol', { class: 'timeline', id: 'timeline' });
  main.replaceChildren(
    h('h1', {}, 'Job ', h('span', { class: 'mono', id: 'job-id' }, id)),
    h('div', { class: 'card' }, facts, progress, h('div', { class: 'toolbar' }, cancel, cancelError)),
    data,
    h('h2', {}, 'Timeline'),
    h('div', { class: 'card' }, timeline));

  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    cancelError.textContent = '';
    try {
      await api(`${API}/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
    } catch (e) {
      cancelError.textContent = e.message;
    }
    load();
  });

  const showProgress = (status, p) => {
    const running = !ENDED.has(status) && p && typeof p.progress === 'number';
    progress.hidden = !running;
    if (running) {
      const pct = Math.max(0, Math.min(1, p.progress)) * 100;
      progress.querySelector('.progress > div').style.width = `${pct}%`;
      progress.querySelector('span').textContent = `${pct.toFixed(0)} %${p.message ? ` · ${p.message}` : ''}`;
    }
  };

  const load = async () => {
    let job, history;
    try {
      [job, history] = await Promise.all([
        api(`${API}/jobs/${encodeURIComponent(id)}`),
        api(`${API}/jobs/${encodeURIComponent(id)}/history`),
      ]);
    } catch (e) {
      return failed(e);
    }
    const fact = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
    facts.replaceChildren(
      ...fact('Status', h('span', { id: 'job-status' }, statusBadge(job.status))),
      ...fact('Blueprint', `${job.blueprint} (version ${job.blueprint_version})`),
      ...fact('State', h('span', { id: 'job-state' }, job.current_state)),
      ...fact('Created', when(job.created_at)),
      ...fact('Ended', job.finished_at ? `${when(job.finished_at)} (took ${took(job.created_at, job.finished_at)})` : '—'),
      ...(job.task_worker_id ? fact('Worker', h('span', { class: 'mono' }, job.task_worker_id)) : []),
      ...(job.waiting_reason ? fact('Waiting', job.waiting_reason) : []));
    showProgress(job.status, job.progress);
    cancel.hidden = ENDED.has(job.status);
    cancel.disabled = false;
    const block = (title, pid, value) => h('div', {}, h('h2', {}, title), h('pre', { id: pid }, value === null || value === undefined ? '—' : json(value)));
    data.replaceChildren(
      block('Initial data', 'initial-data', job.initial_data),
      job.error ? block('Error', 'job-error', job.error) : block('Result', 'result', job.result));
    timeline.replaceChildren(...history.events.map(timelineEntry));
  };
  const reload = throttle(load, 300);
  load();
  return stream(`${API}/jobs/stream?ids=${encodeURIComponent(id)}`, {
    job: (u) => {
      document.getElementById('job-status')?.replaceChildren(statusBadge(u.status));
      showProgress(u.status, u.progress);
      reload();
    },
    lagged: reload,
  });
}

function timelineEntry(ev) {
  const kind = ev.event;
  const cls = ['finished', 'task_result'].includes(kind) ? 'ok'
    : ['failed', 'task_failed', 'quarantined', 'retries_exhausted', 'cancelled'].includes(kind) ? 'bad'
      : ev.task ? 'task' : '';
  const t = ev.task;
  return h('li', { class: cls, 'data-event': kind },
    h('span', { class: 'when' }, new Date(ev.at).toLocaleTimeString()),
    h('b', {}, kind.replace(/_/g, ' ')), ' ', ev.message,
    t && h('span', { class: 'attempt', 'data-task-attempt': t.attempt },
      `task ${t.task_type} · attempt ${t.attempt}`,
      t.worker_id ? ` · worker ${t.worker_id}` : '',
      t.duration_ms !== undefined ? ` · ${duration(t.duration_ms)}` : '',
      t.outcome ? ` · ${t.outcome}` : ''));
}

// ---------------------------------------------------------------- workers

function workersPage() {
  const tbody = h('tbody', { id: 'workers-body' });
  main.replaceChildren(
    h('h1', {}, 'Workers'),
    h('table', { id: 'workers' },
      h('thead', {}, h('tr', {}, ['Worker', 'Type', 'Status', 'Skills', 'Slots in use', 'Last heartbeat', 'Plugins'].map((t) => h('th', {}, t)))),
      tbody));
  let workers = [];
  const draw = () => {
    if (!workers.length) {
      return tbody.replaceChildren(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No worker is registered.')));
    }
    tbody.replaceChildren(...workers.map((w) => {
      const max = w.capabilities?.extra?.max_concurrent_tasks;
      const age = (Date.now() - new Date(w.last_heartbeat_at)) / 1000;
      return h('tr', { 'data-worker-id': w.worker_id },
        h('td', { class: 'mono' }, w.worker_id),
        h('td', {}, w.worker_type),
        h('td', {}, w.status),
        h('td', {}, (w.supported_skills || []).join(', ')),
        h('td', { class: 'cell-slots' }, max ? `${w.in_flight_tasks.length} / ${max}` : String(w.in_flight_tasks.length)),
        h('td', { class: 'cell-heartbeat' }, `${Math.max(0, age).toFixed(0)} s ago`),
        h('td', {}, (w.plugins || []).map((p) => `${p.name}@${p.version || p.sha256?.slice(0, 8) || '?'}${p.error ? ' (failed)' : ''}`).join(', ') || 'none deployed (plugins directory only)'));
    }));
  };
  const load = async () => {
    try {
      workers = await api(`${API}/workers`);
      draw();
    } catch (e) {
      failed(e);
    }
  };
  load();
  const refresh = setInterval(load, 2000);
  const tick = setInterval(draw, 1000);
  return () => { clearInterval(refresh); clearInterval(tick); };
}

// ---------------------------------------------------------------- blueprints

function blueprintsPage() {
  const list = h('div', { id: 'blueprints' });
  main.replaceChildren(h('h1', {}, 'Blueprints'), list);
  api(`${API}/blueprints`).then((blueprints) => {
    if (!blueprints.length) list.append(h('p', { class: 'muted' }, 'No blueprint is served.'));
    for (const b of blueprints) {
      list.append(h('div', { class: 'card', 'data-blueprint': b.name },
        h('h2', {}, `${b.name} `, h('span', { class: 'muted' }, `version ${b.version}`)),
        h('p', {}, 'Create a job: ', h('code', {}, `POST ${b.endpoint}`),
          b.task_types.length ? ` · tasks: ${b.task_types.join(', ')}` : ''),
        graph(b.graph)));
    }
  }).catch(failed);
}

/** States in columns by distance from the start; arrows labelled. */
function graph(g) {
  const W = 150, H = 44, GX = 90, GY = 26;
  const depth = new Map();
  const start = g.nodes.find((n) => n.start);
  const queue = start ? [start.name] : [];
  if (start) depth.set(start.name, 0);
  while (queue.length) {
    const at = queue.shift();
    for (const e of g.edges.filter((x) => x.from === at)) {
      if (!depth.has(e.to)) { depth.set(e.to, depth.get(at) + 1); queue.push(e.to); }
    }
  }
  let deepest = Math.max(0, ...depth.values());
  for (const n of g.nodes) if (!depth.has(n.name)) depth.set(n.name, ++deepest);
  const columns = [];
  for (const n of g.nodes) (columns[depth.get(n.name)] ||= []).push(n);
  const pos = new Map();
  columns.forEach((col, x) => col.forEach((n, y) => pos.set(n.name, { x: 10 + x * (W + GX), y: 10 + y * (H + GY) })));
  const width = 20 + columns.length * (W + GX) - GX;
  const height = 20 + Math.max(...columns.map((c) => c.length)) * (H + GY) - GY;
  const svg = s('svg', { class: 'graph', viewBox: `0 0 ${width} ${height}`, width, height });
  const defs = s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
    s('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#8a90a0' })));
  svg.append(defs);
  for (const e of g.edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    let d, lx, ly;
    if (b.x > a.x) {
      const [x1, y1, x2, y2] = [a.x + W, a.y + H / 2, b.x, b.y + H / 2];
      d = `M ${x1} ${y1} C ${x1 + GX / 2} ${y1}, ${x2 - GX / 2} ${y2}, ${x2} ${y2}`;
      [lx, ly] = [(x1 + x2) / 2, (y1 + y2) / 2 - 4];
    } else {
      // Back or same-column arrow: a loop over the top.
      const [x1, y1, x2, y2] = [a.x + W / 2, a.y, b.x + W / 2, b.y];
      const top = Math.min(y1, y2) - 8;
      d = `M ${x1} ${y1} C ${x1} ${top - 20}, ${x2} ${top - 20}, ${x2} ${y2}`;
      [lx, ly] = [(x1 + x2) / 2, top - 6];
    }
    svg.append(s('g', { class: 'edge', 'data-from': e.from, 'data-to': e.to },
      s('path', { d, 'marker-end': 'url(#arrow)' }),
      s('text', { x: lx, y: ly, 'text-anchor': 'middle' }, e.on)));
  }
  for (const n of g.nodes) {
    const p = pos.get(n.name);
    const cls = ['node', n.start ? 'start' : '', n.kind === 'end' ? `end-${n.detail}` : ''].join(' ');
    svg.append(s('g', { class: cls, 'data-state': n.name, transform: `translate(${p.x},${p.y})` },
      s('rect', { width: W, height: H, rx: 6 }),
      s('text', { x: 10, y: 18 }, n.name),
      s('text', { class: 'detail', x: 10, y: 34 }, n.kind === 'end' ? `ends: ${n.detail}` : n.detail ? `${n.kind}: ${n.detail}` : n.kind)));
  }
  return h('div', { class: 'graph-box' }, svg);
}

start();
