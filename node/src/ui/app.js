/*
 * Shoal dashboard: one page, hash routing, no build step, no external URLs.
 *
 * Pages (location.hash):
 *   #/nodes                  every node the node knows (GET /v1/nodes)
 *   #/jobs[?state=S]         jobs, newest first (GET /v1/jobs), re-listed every 2 s
 *   #/jobs/<id>              one job, followed live (GET /v1/jobs/{id}/events, else polling)
 *   #/browse[/<cid>/<path>]  a CID's tree (GET /v1/ls), previews (GET /v1/cat), downloads
 *   #/submit                 upload a module and inputs (POST /v1/files), submit (POST /v1/jobs)
 *
 * Every request sends `X-Shoal-Request: 1` and, when a token is set (sessionStorage),
 * `Authorization: Bearer <token>`. Text from the API is only ever inserted with
 * textContent / attribute setters, never as HTML.
 *
 * Stable hooks for tests (ids unless marked [data-*] or .class):
 *   layout   #nav-nodes #nav-jobs #nav-submit #nav-browse (the active one has aria-current="page")
 *            #view (page container, data-page=<page> once rendered, data-ready="1" after first data)
 *            #health (peer, version), #banner (global errors)
 *   token    #token-button #token-panel #token-form #token-input #token-save #token-clear #token-status
 *   nodes    #nodes-table, #nodes-count, rows tr[data-node=<peer id>][data-self=true|false],
 *            .badge-self on the self row, #nodes-error
 *   jobs     #jobs-state (select), #jobs-table, #jobs-count, #jobs-empty, #jobs-error,
 *            rows tr[data-job=<id>][data-state=<state>][data-outcome=<outcome|"">],
 *            cells .job-link .job-state .job-outcome .job-result
 *   job      #job-id #job-state #job-outcome #job-exit-code #job-failure #job-error
 *            #job-result (contains a#result-link when there is a result) #job-agreement
 *            #job-live (data-mode=events|polling|ended|connecting, data-events=<job events read from the stream>)
 *            #job-cancel #job-warnings
 *            #job-executions > .execution[data-execution=<id>][data-state][data-agreement=agreed|dissented|pending|none]
 *              with ol.timeline > li.step[data-step=<state>] (ol.timeline.approx: no `timeline` from the API)
 *            #job-logs > .log[data-execution=<id>] with pre.stdout / pre.stderr, #job-spec (pre),
 *            #job-body (hidden until the job is read), #job-load-error
 *   browse   #browse-form #browse-cid #browse-open #browse-crumbs #browse-info #browse-error
 *            #browse-list rows tr[data-entry=<name>][data-kind=<kind>] with a.entry-link
 *            #download-file #download-car #preview (data-kind=loading|text|image|binary|empty|error),
 *            pre#preview-text, img#preview-image, #preview-note
 *   submit   #submit-form #submit-module #submit-inputs #submit-input-list (li[data-input=<name>])
 *            #submit-args #submit-env #submit-redundancy #submit-quorum #submit-button
 *            #submit-status #submit-error (the API's warnings are shown on the job page, #job-warnings)
 */
'use strict';

(function () {
  const TOKEN_KEY = 'shoal.api-token';
  const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
  const JOB_STATES = ['queued', 'running', 'completed', 'failed', 'cancelled'];
  const PREVIEW_CAP = 256 * 1024;
  const IMAGE_CAP = 32 * 1024 * 1024;
  const JOBS_POLL_MS = 2000;
  const NODES_POLL_MS = 3000;
  const JOB_POLL_MS = 1000;

  /** Warnings returned by POST /v1/jobs, kept to show them on the job page. */
  const submitWarnings = new Map();
  /** Peer id of the node this dashboard talks to (from /v1/health). */
  let selfPeer = null;

  // ---------------------------------------------------------------- helpers

  function $(sel, root) { return (root || document).querySelector(sel); }

  /** Creates an element. Strings among the children become text nodes. */
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = String(v);
        else if (k === 'dataset') { for (const [dk, dv] of Object.entries(v)) if (dv !== null && dv !== undefined) e.dataset[dk] = String(dv); }
        else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
        else if (v === true) e.setAttribute(k, '');
        else e.setAttribute(k, String(v));
      }
    }
    add(e, children);
    return e;
  }

  function add(parent, ...children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      parent.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return parent;
  }

  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function replace(e, ...children) { clear(e); return add(e, children); }

  function shortId(id, head, tail) {
    if (typeof id !== 'string') return '';
    head = head || 6; tail = tail || 6;
    return id.length > head + tail + 1 ? id.slice(0, head) + '\u2026' + id.slice(-tail) : id;
  }

  function mono(text, full) {
    return h('span', { class: 'mono', title: full || text }, text);
  }

  function fmtBytes(n) {
    if (n === null || n === undefined || !isFinite(n)) return '\u2014';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0; let v = Number(n);
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + ' ' + units[i];
  }

  function fmtDur(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '\u2014';
    const neg = ms < 0; ms = Math.abs(ms);
    let t;
    if (ms < 1000) t = Math.round(ms) + ' ms';
    else if (ms < 60000) t = (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
    else if (ms < 3600000) t = Math.floor(ms / 60000) + ' min ' + Math.round((ms % 60000) / 1000) + ' s';
    else t = Math.floor(ms / 3600000) + ' h ' + Math.round((ms % 3600000) / 60000) + ' min';
    return (neg ? '-' : '') + t;
  }

  function ago(ms) {
    if (!ms) return '\u2014';
    const d = Date.now() - ms;
    const s = Math.round(Math.abs(d) / 1000);
    let t;
    if (s < 2) return 'just now';
    if (s < 60) t = s + ' s';
    else if (s < 3600) t = Math.floor(s / 60) + ' min';
    else if (s < 86400) t = Math.floor(s / 3600) + ' h';
    else t = Math.floor(s / 86400) + ' d';
    return d >= 0 ? t + ' ago' : 'in ' + t;
  }

  function isoTime(ms) {
    if (!ms) return '';
    try { return new Date(ms).toISOString(); } catch (e) { return String(ms); }
  }

  function timeEl(ms) {
    return h('time', { datetime: isoTime(ms) || null, title: isoTime(ms) || null, dataset: { ms: ms || null } }, ago(ms));
  }

  function badge(text, cls, attrs) {
    return h('span', Object.assign({ class: 'badge ' + (cls || '') }, attrs || {}), text);
  }

  function stateBadge(state, extra) {
    const s = typeof state === 'string' ? state : 'unknown';
    return h('span', Object.assign({ class: 'badge state state-' + s.replace(/[^a-z_]/g, '') }, extra || {}), s);
  }

  function encPath(segments) { return segments.map(encodeURIComponent).join('/'); }

  function safeDecode(s) { try { return decodeURIComponent(s); } catch (e) { return s; } }

  function browseHref(cid, segments) {
    const p = segments && segments.length ? '/' + encPath(segments) : '';
    return '#/browse/' + encodeURIComponent(cid) + p;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (e) { return ''; }
  }

  function setToken(t) {
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage disabled: nothing to keep */ }
    updateTokenStatus();
  }

  /** fetch() with the dashboard's headers; throws ApiError on any non-2xx. */
  async function api(path, opts) {
    opts = Object.assign({}, opts || {});
    const headers = new Headers(opts.headers || {});
    headers.set('X-Shoal-Request', '1');
    const token = getToken();
    if (token) headers.set('Authorization', 'Bearer ' + token);
    opts.headers = headers;
    opts.cache = 'no-store';
    opts.credentials = 'same-origin';
    opts.redirect = 'error';
    let resp;
    try {
      resp = await fetch(path, opts);
    } catch (e) {
      if (e && e.name === 'AbortError') throw e;
      throw new ApiError(0, 'cannot reach the node (' + (e && e.message ? e.message : 'network error') + ')');
    }
    if (!resp.ok) {
      let msg = '';
      try {
        const text = await resp.text();
        try { const j = JSON.parse(text); msg = j && typeof j.error === 'string' ? j.error : text; } catch (e) { msg = text; }
      } catch (e) { /* body unreadable */ }
      msg = (msg || resp.statusText || 'request failed').slice(0, 2000);
      if (resp.status === 401) askForToken(msg);
      throw new ApiError(resp.status, resp.status + ': ' + msg);
    }
    return resp;
  }

  async function apiJson(path, opts) {
    const r = await api(path, opts);
    return r.json();
  }

  function postJson(path, body, signal) {
    return apiJson(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: signal,
    });
  }

  function errText(e) {
    if (!e) return 'unknown error';
    if (e instanceof ApiError) return e.message;
    return e.message || String(e);
  }

  function isAbort(e) { return e && e.name === 'AbortError'; }

  /** Reads a response body in steps: readUpTo(n) returns its first n bytes (fewer when it ends). */
  function bodyReader(resp) {
    const reader = resp.body.getReader();
    const chunks = []; let n = 0; let ended = false;
    return {
      async readUpTo(cap) {
        while (!ended && n < cap) {
          const { value, done } = await reader.read();
          if (done) { ended = true; break; }
          chunks.push(value); n += value.length;
        }
        const len = Math.min(n, cap);
        const out = new Uint8Array(len); let o = 0;
        for (const c of chunks) {
          if (o >= len) break;
          const part = c.subarray(0, len - o);
          out.set(part, o); o += part.length;
        }
        return { bytes: out, truncated: n > cap || !ended };
      },
      cancel() { if (!ended) { ended = true; reader.cancel().catch(() => {}); } },
    };
  }

  /** The image type its first bytes say, or null. */
  function sniffImage(b) {
    const starts = (sig, at) => sig.every((v, i) => b[(at || 0) + i] === v);
    if (starts([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'image/png';
    if (starts([0xff, 0xd8, 0xff])) return 'image/jpeg';
    if (starts([0x47, 0x49, 0x46, 0x38])) return 'image/gif';
    if (starts([0x52, 0x49, 0x46, 0x46]) && starts([0x57, 0x45, 0x42, 0x50], 8)) return 'image/webp';
    if (starts([0x42, 0x4d])) return 'image/bmp';
    return null;
  }

  /** Downloads through fetch so that the token is sent, then saves the blob. */
  async function download(path, filename, button) {
    const label = button ? button.textContent : '';
    if (button) { button.disabled = true; button.textContent = 'Downloading\u2026'; }
    try {
      const r = await api(path);
      const blob = await r.blob();
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: filename || 'download' });
      document.body.append(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (e) {
      showBanner('download failed: ' + errText(e));
    } finally {
      if (button) { button.disabled = false; button.textContent = label; }
    }
  }

  // ---------------------------------------------------------------- chrome: banner, token, health

  function showBanner(msg) {
    const b = $('#banner');
    replace(b, h('span', null, msg), h('button', { type: 'button', class: 'small secondary', onclick: () => { b.hidden = true; } }, 'Dismiss'));
    b.hidden = false;
  }

  function updateTokenStatus() {
    const s = $('#token-status');
    const btn = $('#token-button');
    const set = !!getToken();
    if (s) s.textContent = set ? 'a token is set for this tab' : 'no token set';
    if (btn) { btn.textContent = set ? 'Token \u2713' : 'Token'; btn.classList.toggle('has-token', set); }
  }

  function toggleTokenPanel(open) {
    const p = $('#token-panel');
    p.hidden = !open;
    $('#token-button').setAttribute('aria-expanded', open ? 'true' : 'false');
    if (open) $('#token-input').focus();
  }

  let askedForToken = false;
  function askForToken(msg) {
    const reason = $('#token-reason');
    reason.textContent = 'The node refused the request (401: ' + msg + '). Paste its API token (the file <home>/api-token on the node); it is kept in this tab only.';
    reason.classList.add('warn');
    toggleTokenPanel(true);
    if (!askedForToken) { askedForToken = true; showBanner('This node needs an API token: set it under Token.'); }
  }

  function setupToken() {
    $('#token-button').addEventListener('click', () => toggleTokenPanel($('#token-panel').hidden));
    $('#token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = $('#token-input');
      const t = input.value.trim();
      input.value = '';
      if (!t) return;
      setToken(t);
      askedForToken = false;
      $('#token-reason').classList.remove('warn');
      $('#banner').hidden = true;
      toggleTokenPanel(false);
      refreshHealth();
      route();
    });
    $('#token-clear').addEventListener('click', () => { $('#token-input').value = ''; setToken(''); });
    updateTokenStatus();
  }

  async function refreshHealth() {
    const el = $('#health');
    try {
      const hl = await apiJson('/v1/health');
      selfPeer = typeof hl.peer === 'string' ? hl.peer : null;
      el.classList.remove('bad');
      replace(el,
        h('span', { class: 'dot ok', 'aria-hidden': 'true' }),
        'node ', mono(shortId(selfPeer || '?'), selfPeer || ''),
        ' \u00b7 v' + (hl.version || '?') + ' \u00b7 ' + (hl.connected_peers ?? '?') + ' peer' + (hl.connected_peers === 1 ? '' : 's'));
    } catch (e) {
      el.classList.add('bad');
      replace(el, h('span', { class: 'dot bad', 'aria-hidden': 'true' }), e.status === 401 ? 'token needed' : 'node unreachable');
    }
  }

  // ---------------------------------------------------------------- router

  /** The running page: its abort signal and what to undo when leaving it. */
  let current = null;

  function newContext() {
    const ctrl = new AbortController();
    const ctx = {
      alive: true,
      signal: ctrl.signal,
      cleanups: [() => ctrl.abort()],
      onCleanup(f) { this.cleanups.push(f); },
      /** Runs fn now and then every ms (after each run finishes), until the page is left. */
      every(ms, fn) {
        let timer = null;
        const tick = async () => {
          if (!ctx.alive) return;
          try { await fn(); } catch (e) { /* fn shows its own errors */ }
          if (ctx.alive) timer = setTimeout(tick, ms);
        };
        ctx.onCleanup(() => clearTimeout(timer));
        tick();
      },
      sleep(ms) {
        return new Promise((resolve) => {
          const t = setTimeout(resolve, ms);
          ctx.onCleanup(() => { clearTimeout(t); resolve(); });
        });
      },
    };
    return ctx;
  }

  function parseHash() {
    let raw = location.hash.replace(/^#\/?/, '');
    let query = '';
    const q = raw.indexOf('?');
    if (q >= 0) { query = raw.slice(q + 1); raw = raw.slice(0, q); }
    const parts = raw.split('/').filter((p) => p !== '').map(safeDecode);
    return { parts, params: new URLSearchParams(query) };
  }

  function route() {
    if (current) {
      current.alive = false;
      for (const f of current.cleanups) { try { f(); } catch (e) { /* ignore */ } }
    }
    const ctx = newContext();
    current = ctx;
    const { parts, params } = parseHash();
    const page = parts[0] || 'nodes';
    const view = $('#view');
    clear(view);
    view.dataset.page = page;
    delete view.dataset.ready;
    for (const a of document.querySelectorAll('#nav a')) {
      if (a.dataset.page === page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    switch (page) {
      case 'nodes': document.title = 'Nodes \u2014 Shoal'; nodesPage(ctx, view); break;
      case 'jobs':
        if (parts[1]) { document.title = 'Job ' + parts[1] + ' \u2014 Shoal'; view.dataset.page = 'job'; jobPage(ctx, view, parts[1]); }
        else { document.title = 'Jobs \u2014 Shoal'; jobsPage(ctx, view, params); }
        break;
      case 'browse': document.title = 'Browse \u2014 Shoal'; browsePage(ctx, view, parts[1] || '', parts.slice(2)); break;
      case 'submit': document.title = 'Submit \u2014 Shoal'; submitPage(ctx, view); break;
      default:
        document.title = 'Not found \u2014 Shoal';
        add(view, h('h1', null, 'Not found'), h('p', null, 'No page here. ', h('a', { href: '#/nodes' }, 'Go to the nodes.')));
    }
  }

  function ready(view) { view.dataset.ready = '1'; }

  function errorBox(id) { return h('div', { id: id, class: 'error', role: 'alert', hidden: true }); }
  function setError(box, e) {
    if (!box) return;
    if (e) { box.textContent = typeof e === 'string' ? e : errText(e); box.hidden = false; } else { box.textContent = ''; box.hidden = true; }
  }

  // ---------------------------------------------------------------- nodes

  function nodesPage(ctx, view) {
    const count = h('span', { id: 'nodes-count', class: 'muted' });
    const err = errorBox('nodes-error');
    const tbody = h('tbody');
    const table = h('table', { id: 'nodes-table', class: 'grid' },
      h('thead', null, h('tr', null,
        h('th', null, 'Node'), h('th', null, 'Capacity'), h('th', null, 'GPU / device'),
        h('th', null, 'Labels'), h('th', null, 'Record'), h('th', null, 'Last seen'))),
      tbody);
    add(view,
      h('div', { class: 'page-head' }, h('h1', null, 'Nodes'), count),
      err,
      h('div', { class: 'table-wrap' }, table));
    let lastText = null;
    ctx.every(NODES_POLL_MS, async () => {
      let data;
      try {
        data = await apiJson('/v1/nodes', { signal: ctx.signal });
      } catch (e) {
        if (!ctx.alive || isAbort(e)) return;
        setError(err, e); return;
      }
      if (!ctx.alive) return;
      setError(err, null);
      const list = Array.isArray(data.nodes) ? data.nodes.slice() : [];
      list.sort((a, b) => (b.self ? 1 : 0) - (a.self ? 1 : 0));
      const text = JSON.stringify(list);
      if (text !== lastText) {
        lastText = text;
        replace(tbody, list.map(nodeRow));
        if (!list.length) add(tbody, h('tr', null, h('td', { colspan: 6, class: 'muted' }, 'No nodes known yet.')));
      } else {
        for (const t of tbody.querySelectorAll('time[data-ms]')) t.textContent = ago(Number(t.dataset.ms));
      }
      count.textContent = list.length + ' node' + (list.length === 1 ? '' : 's');
      ready(view);
    });
  }

  function nodeRow(entry) {
    const n = (entry && entry.node) || {};
    const id = typeof n.id === 'string' ? n.id : '';
    const stats = n.stats || {};
    const total = Number(n.slots_total) || 0;
    const free = Number(n.slots_free) || 0;
    const pct = total > 0 ? Math.round(((total - free) / total) * 100) : 0;
    const labels = n.labels && typeof n.labels === 'object' ? Object.entries(n.labels) : [];
    const gpu = n.gpu;
    const rec = (k, cls) => h('span', { class: 'rec ' + (Number(stats[k]) > 0 ? cls : ''), dataset: { stat: k } },
      h('b', null, String(stats[k] ?? 0)), ' ' + k);
    const meter = h('progress', { class: 'meter', max: 100, value: pct, 'aria-label': pct + '% of slots in use' });
    return h('tr', { dataset: { node: id, self: entry.self ? 'true' : 'false' }, class: entry.self ? 'self' : null },
      h('td', null,
        h('div', null, mono(shortId(id, 8, 8), id), entry.self ? badge('self', 'badge-self', { title: 'the node this dashboard talks to' }) : null,
          n.compute === false ? badge('no compute', 'muted-badge') : null),
        entry.api ? h('div', { class: 'small muted mono' }, String(entry.api)) : null,
        n.version ? h('div', { class: 'small muted' }, 'v' + n.version) : null),
      h('td', null,
        h('div', null, h('b', null, free + '/' + total), ' slots free'),
        total > 0 ? meter : null,
        h('div', { class: 'small muted' }, fmtBytes(n.memory_bytes) + ' memory')),
      h('td', null, gpu
        ? [h('div', null, String(gpu.name || 'GPU')),
          h('div', { class: 'small muted' }, fmtBytes(gpu.memory_bytes), ' ', gpu.software ? badge('software', 'warn-badge', { title: 'a software Vulkan device (lavapipe): correct, slow' }) : badge('hardware', 'ok-badge'), ' ', gpu.exact ? badge('exact', 'ok-badge', { title: 'runs exact inference: results agree with the CPU and other exact GPUs' }) : badge('no exact', 'warn-badge', { title: 'cannot run exact inference: only fast GPU jobs are placed here' })),
          gpu.driver ? h('div', { class: 'small muted' }, String(gpu.driver)) : null]
        : h('span', { class: 'muted' }, 'CPU only')),
      h('td', null, labels.length ? h('div', { class: 'chips' }, labels.map(([k, v]) => h('span', { class: 'chip', title: k + '=' + v }, k + '=' + v))) : h('span', { class: 'muted' }, '\u2014')),
      h('td', { class: 'record' }, rec('agreed', 'good'), rec('dissented', 'bad'), rec('lost', 'warn'), rec('failed', 'bad')),
      h('td', null, timeEl(n.last_seen_ms)));
  }

  // ---------------------------------------------------------------- jobs

  function outcomeEl(job, attrs) {
    const o = job.outcome;
    if (o === 'succeeded') return h('span', Object.assign({ class: 'outcome good' }, attrs || {}), 'succeeded' + (job.exit_code !== null && job.exit_code !== undefined ? ' (exit ' + job.exit_code + ')' : ''));
    if (o === 'failed') return h('span', Object.assign({ class: 'outcome bad' }, attrs || {}), 'failed' + (job.exit_code !== null && job.exit_code !== undefined ? ' (exit ' + job.exit_code + ')' : ''));
    return h('span', Object.assign({ class: 'outcome muted' }, attrs || {}), o ? String(o) : '\u2014');
  }

  function jobsPage(ctx, view, params) {
    const stateSel = h('select', { id: 'jobs-state', 'aria-label': 'filter by state' },
      h('option', { value: '' }, 'all states'),
      JOB_STATES.map((s) => h('option', { value: s }, s)));
    const want = params.get('state') || '';
    stateSel.value = JOB_STATES.includes(want) ? want : '';
    stateSel.addEventListener('change', () => {
      location.hash = stateSel.value ? '#/jobs?state=' + encodeURIComponent(stateSel.value) : '#/jobs';
    });
    const count = h('span', { id: 'jobs-count', class: 'muted' });
    const err = errorBox('jobs-error');
    const tbody = h('tbody');
    const empty = h('p', { id: 'jobs-empty', class: 'empty', hidden: true });
    add(view,
      h('div', { class: 'page-head' }, h('h1', null, 'Jobs'), count,
        h('div', { class: 'spacer' }),
        h('label', { class: 'inline' }, 'State ', stateSel),
        h('a', { href: '#/submit', class: 'button' }, 'Submit a job')),
      err,
      h('div', { class: 'table-wrap' }, h('table', { id: 'jobs-table', class: 'grid' },
        h('thead', null, h('tr', null, h('th', null, 'Job'), h('th', null, 'State'), h('th', null, 'Outcome'),
          h('th', null, 'Result'), h('th', null, 'Module'), h('th', null, 'Created'), h('th', null, 'Updated'))),
        tbody)),
      empty);
    let lastText = null;
    const url = '/v1/jobs?limit=200' + (stateSel.value ? '&state=' + encodeURIComponent(stateSel.value) : '');
    ctx.every(JOBS_POLL_MS, async () => {
      let data;
      try {
        data = await apiJson(url, { signal: ctx.signal });
      } catch (e) {
        if (!ctx.alive || isAbort(e)) return;
        setError(err, e); return;
      }
      if (!ctx.alive) return;
      setError(err, null);
      const jobs = Array.isArray(data.jobs) ? data.jobs : [];
      const text = JSON.stringify(jobs);
      if (text !== lastText) {
        lastText = text;
        replace(tbody, jobs.map(jobRow));
      } else {
        for (const t of tbody.querySelectorAll('time[data-ms]')) t.textContent = ago(Number(t.dataset.ms));
      }
      count.textContent = jobs.length + ' job' + (jobs.length === 1 ? '' : 's') + (jobs.length >= 200 ? ' (newest 200)' : '');
      empty.hidden = jobs.length > 0;
      replace(empty, stateSel.value ? 'No ' + stateSel.value + ' jobs.' : 'No jobs yet. ', stateSel.value ? null : h('a', { href: '#/submit' }, 'Submit one.'));
      ready(view);
    });
  }

  function jobRow(job) {
    const id = typeof job.id === 'string' ? job.id : '';
    const mod = job.spec && job.spec.task && typeof job.spec.task.module === 'string' ? job.spec.task.module : null;
    return h('tr', { dataset: { job: id, state: job.state, outcome: job.outcome || '' } },
      h('td', null, h('a', { class: 'job-link mono', href: '#/jobs/' + encodeURIComponent(id) }, id)),
      h('td', null, stateBadge(job.state, { class: 'badge state job-state state-' + String(job.state).replace(/[^a-z_]/g, '') })),
      h('td', null, outcomeEl(job, { class: 'job-outcome outcome ' + (job.outcome === 'succeeded' ? 'good' : job.outcome === 'failed' ? 'bad' : 'muted') })),
      h('td', { class: 'job-result' }, job.result
        ? h('a', { class: 'mono', href: browseHref(job.result, []), title: job.result }, shortId(job.result, 8, 6))
        : (job.error ? h('span', { class: 'bad small', title: String(job.error) }, shortText(String(job.error), 60)) : h('span', { class: 'muted' }, '\u2014'))),
      h('td', null, mod ? mono(shortId(mod, 8, 6), mod) : '\u2014'),
      h('td', null, timeEl(job.created_ms)),
      h('td', null, timeEl(job.updated_ms)));
  }

  function shortText(s, n) { return s.length > n ? s.slice(0, n - 1) + '\u2026' : s; }

  // ---------------------------------------------------------------- one job

  function jobPage(ctx, view, id) {
    const live = h('span', { id: 'job-live', class: 'live', dataset: { mode: 'connecting' } }, 'connecting\u2026');
    const cancelBtn = h('button', { type: 'button', id: 'job-cancel', class: 'danger', hidden: true }, 'Cancel job');
    const loadErr = errorBox('job-load-error');
    const warnBox = h('div', { id: 'job-warnings', class: 'warnings', hidden: true });
    const summary = h('dl', { id: 'job-summary', class: 'summary' });
    const agreement = h('p', { id: 'job-agreement' });
    const execs = h('div', { id: 'job-executions' });
    const logs = h('div', { id: 'job-logs' }, h('p', { class: 'muted' }, 'Logs are shown once the job has ended.'));
    const specPre = h('pre', { id: 'job-spec', class: 'code' });
    const jobBody = h('div', { id: 'job-body', hidden: true },
      h('div', { class: 'job-top' },
        h('section', { class: 'card' }, h('h2', null, 'Status'), summary),
        h('section', { class: 'card spec-card' }, h('h2', null, 'Spec'), specPre)),
      h('section', { class: 'card' }, h('h2', null, 'Executions'), agreement, execs),
      h('section', { class: 'card' }, h('h2', null, 'Logs'), logs));
    add(view,
      h('div', { class: 'page-head' },
        h('h1', null, 'Job ', h('span', { id: 'job-id', class: 'mono' }, id)),
        live, h('div', { class: 'spacer' }), cancelBtn),
      h('p', { class: 'crumbs' }, h('a', { href: '#/jobs' }, '\u2190 all jobs')),
      loadErr, warnBox, jobBody);

    const warnings = submitWarnings.get(id);
    if (warnings && warnings.length) {
      replace(warnBox, h('strong', null, 'The node warned when the job was submitted:'), h('ul', null, warnings.map((w) => h('li', null, String(w)))));
      warnBox.hidden = false;
    }

    const path = '/v1/jobs/' + encodeURIComponent(id);
    let lastText = null;
    let ended = false;
    let logsLoaded = false;
    let specShown = false;
    let confirmTimer = null;
    let eventCount = 0;

    function setLive(mode, text) { live.dataset.mode = mode; live.textContent = text; }

    function render(data) {
      if (!ctx.alive || !data || !data.job) return;
      const text = JSON.stringify(data);
      if (text === lastText) return;
      lastText = text;
      const job = data.job;
      const executions = Array.isArray(data.executions) ? data.executions : [];
      setError(loadErr, null);
      jobBody.hidden = false;
      if (!specShown) { specPre.textContent = JSON.stringify(job.spec, null, 2); specShown = true; }
      renderSummary(summary, job, executions);
      renderAgreement(agreement, job, executions);
      replace(execs, executions.length ? executions.map((e) => executionCard(job, e)) : h('p', { class: 'muted' }, 'No executions yet: the job waits for nodes to bid.'));
      const cancellable = job.state === 'queued' || job.state === 'running';
      cancelBtn.hidden = !cancellable;
      if (TERMINAL.has(job.state)) {
        ended = true;
        setLive('ended', 'ended');
        if (!logsLoaded) { logsLoaded = true; loadLogs(); }
      }
      ready(view);
    }

    async function loadLogs() {
      replace(logs, h('p', { class: 'muted' }, 'Loading logs\u2026'));
      try {
        const data = await apiJson(path + '/logs', { signal: ctx.signal });
        if (!ctx.alive) return;
        const list = Array.isArray(data.executions) ? data.executions : [];
        if (!list.length) { replace(logs, h('p', { class: 'muted' }, 'No execution left logs.')); return; }
        replace(logs, list.map((l) => h('div', { class: 'log', dataset: { execution: l.execution } },
          h('h3', null, 'Execution ', mono(String(l.execution || '')), ' on ', nodeName(l.node), ' ', stateBadge(l.state),
            l.exit_code !== null && l.exit_code !== undefined ? h('span', { class: 'muted' }, ' exit ' + l.exit_code) : null),
          l.error ? h('p', { class: 'bad' }, String(l.error)) : null,
          h('div', { class: 'stream-label' }, 'stdout'),
          logPre(l.stdout, 'stdout'),
          h('div', { class: 'stream-label' }, 'stderr'),
          logPre(l.stderr, 'stderr'))));
      } catch (e) {
        if (!ctx.alive || isAbort(e)) return;
        logsLoaded = false;
        replace(logs, h('p', { class: 'error' }, 'Logs unavailable: ' + errText(e)));
      }
    }

    cancelBtn.addEventListener('click', async () => {
      if (!cancelBtn.classList.contains('confirm')) {
        cancelBtn.classList.add('confirm');
        cancelBtn.textContent = 'Click again to cancel';
        confirmTimer = setTimeout(() => { cancelBtn.classList.remove('confirm'); cancelBtn.textContent = 'Cancel job'; }, 4000);
        return;
      }
      clearTimeout(confirmTimer);
      cancelBtn.disabled = true;
      cancelBtn.textContent = 'Cancelling\u2026';
      try {
        render(await postJson(path + '/cancel', {}, ctx.signal));
      } catch (e) {
        if (ctx.alive && !isAbort(e)) setError(loadErr, 'cancel failed: ' + errText(e));
      } finally {
        cancelBtn.disabled = false;
        cancelBtn.classList.remove('confirm');
        cancelBtn.textContent = 'Cancel job';
      }
    });
    ctx.onCleanup(() => clearTimeout(confirmTimer));

    async function followEvents() {
      const resp = await api(path + '/events', { signal: ctx.signal, headers: { Accept: 'text/event-stream' } });
      if (!resp.body || !resp.body.getReader) throw new Error('no readable stream');
      setLive('events', 'live');
      const reader = resp.body.getReader();
      ctx.onCleanup(() => { reader.cancel().catch(() => { /* aborted with the page */ }); });
      const dec = new TextDecoder();
      let buf = '';
      const dispatch = (block) => {
        let event = 'message'; const data = [];
        for (const line of block.split('\n')) {
          if (line === '' || line.startsWith(':')) continue;
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          let value = c < 0 ? '' : line.slice(c + 1);
          if (value.startsWith(' ')) value = value.slice(1);
          if (field === 'event') event = value;
          else if (field === 'data') data.push(value);
        }
        if (event === 'job' && data.length) {
          live.dataset.events = String(++eventCount);
          try { render(JSON.parse(data.join('\n'))); } catch (e) { /* a malformed event: the next one or polling fixes it */ }
        }
      };
      for (;;) {
        const { value, done } = await reader.read();
        if (done || !ctx.alive) break;
        buf += dec.decode(value, { stream: true });
        // Normalise line ends, holding back a lone trailing CR (its LF may come next).
        const hold = buf.endsWith('\r');
        if (hold) buf = buf.slice(0, -1);
        buf = buf.replace(/\r\n?/g, '\n');
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) { dispatch(buf.slice(0, i)); buf = buf.slice(i + 2); }
        if (hold) buf += '\r';
      }
    }

    async function poll() {
      setLive('polling', 'polling every second');
      while (ctx.alive && !ended) {
        try {
          render(await apiJson(path, { signal: ctx.signal }));
        } catch (e) {
          if (!ctx.alive || isAbort(e)) return;
          setError(loadErr, e);
          if (e.status === 404 || e.status === 400) { ready(view); return; }
        }
        if (!ended) await ctx.sleep(JOB_POLL_MS);
      }
    }

    (async () => {
      try {
        await followEvents();
      } catch (e) {
        if (!ctx.alive || isAbort(e)) return;
        if (e.status === 404 || e.status === 400) { setError(loadErr, e); setLive('ended', 'not found'); ready(view); return; }
      }
      // The stream closed (the job ended) or could not be used: poll until it ends.
      if (ctx.alive && !ended) await poll();
    })();
  }

  function nodeName(peer) {
    const p = typeof peer === 'string' ? peer : '';
    return h('span', { class: 'mono', title: p }, shortId(p, 6, 6), p && p === selfPeer ? h('span', { class: 'muted' }, ' (this node)') : null);
  }

  function logPre(text, cls) {
    if (text === null || text === undefined) return h('pre', { class: 'log-text empty ' + cls }, '(not shown)');
    if (text === '') return h('pre', { class: 'log-text empty ' + cls }, '(empty)');
    return h('pre', { class: 'log-text ' + cls }, String(text));
  }

  function renderSummary(dl, job, executions) {
    const row = (label, value) => [h('dt', null, label), h('dd', null, value)];
    const exit = job.exit_code;
    const spec = job.spec || {};
    const task = spec.task || {};
    const red = spec.redundancy || {};
    let resultCell;
    if (job.result) {
      resultCell = h('span', { id: 'job-result' },
        h('a', { id: 'result-link', class: 'mono', href: browseHref(job.result, []), title: 'browse the result ' + job.result }, job.result));
    } else {
      resultCell = h('span', { id: 'job-result', class: 'muted' }, TERMINAL.has(job.state) ? 'none' : 'not yet (sealed until a quorum agrees)');
    }
    const started = job.started_ms;
    const end = TERMINAL.has(job.state) ? job.updated_ms : null;
    replace(dl,
      row('State', stateBadge(job.state, { id: 'job-state' })),
      row('Outcome', outcomeEl(job, { id: 'job-outcome' })),
      row('Exit code', h('span', { id: 'job-exit-code', class: 'mono' }, exit === null || exit === undefined ? '\u2014' : String(exit))),
      row('Result', resultCell),
      job.failure ? row('Failure', h('span', { id: 'job-failure', class: 'bad pre-wrap' }, String(job.failure))) : null,
      job.error ? row('Error', h('span', { id: 'job-error', class: 'bad pre-wrap' }, String(job.error))) : null,
      row('Module', typeof task.module === 'string' ? h('a', { class: 'mono', href: browseHref(task.module, []), title: task.module }, shortId(task.module, 10, 8)) : '\u2014'),
      row('Redundancy', (red.count ?? 1) + ' node' + ((red.count ?? 1) === 1 ? '' : 's') + ', quorum ' + (red.quorum ?? 'majority') +
        (red.max_extra ? ', up to ' + red.max_extra + ' extra' : '') + (job.extra_used ? ' (' + job.extra_used + ' extra used)' : '')),
      row('Created', [timeEl(job.created_ms), h('span', { class: 'muted small' }, ' ' + isoTime(job.created_ms))]),
      row('Started', started ? [timeEl(started), h('span', { class: 'muted small' }, ' queued ' + fmtDur(started - job.created_ms))] : '\u2014'),
      row(end ? 'Ended' : 'Updated', [timeEl(job.updated_ms), end ? h('span', { class: 'muted small' }, ' took ' + fmtDur(end - job.created_ms)) : null]),
      row('Executions', String(executions.length)));
  }

  function agreementOf(job, e) {
    if (job.result && e.result) return e.result === job.result ? 'agreed' : 'dissented';
    if (job.result && TERMINAL.has(job.state) && e.error) return 'dissented';
    if (!TERMINAL.has(job.state)) return 'pending';
    return 'none';
  }

  function renderAgreement(p, job, executions) {
    if (!job.result) {
      replace(p, h('span', { class: 'muted' }, TERMINAL.has(job.state)
        ? 'No result was agreed.'
        : 'Results stay sealed until the job ends: nodes commit to a hash first, then reveal.'));
      return;
    }
    const agreed = executions.filter((e) => e.result === job.result);
    const other = executions.filter((e) => e.result && e.result !== job.result);
    replace(p, h('b', null, agreed.length + ' of ' + executions.length), ' execution' + (executions.length === 1 ? '' : 's') + ' agreed on ',
      h('a', { class: 'mono', href: browseHref(job.result, []), title: job.result }, shortId(job.result, 10, 8)),
      other.length ? h('span', { class: 'bad' }, '; ' + other.length + ' revealed a different result') : null, '.');
  }

  function executionCard(job, e) {
    const agreement = agreementOf(job, e);
    const created = job.created_ms;
    let steps = Array.isArray(e.timeline) ? e.timeline.filter((s) => s && typeof s.state === 'string') : null;
    let approx = false;
    if (!steps || !steps.length) {
      approx = true;
      steps = [{ state: 'bid_asked', ms: e.created_ms }];
      if (e.started_ms) steps.push({ state: 'running', ms: e.started_ms });
      if (e.state !== 'bid_asked' && e.state !== 'running') steps.push({ state: e.state, ms: e.updated_ms });
    }
    const meta = e.meta && typeof e.meta === 'object' ? e.meta : null;
    const agreeBadge = {
      agreed: badge('agreed', 'ok-badge agreement'),
      dissented: badge('dissented', 'bad-badge agreement'),
      pending: badge('sealed', 'muted-badge agreement', { title: 'results are revealed once the job ends' }),
      none: null,
    }[agreement];
    return h('div', { class: 'execution', dataset: { execution: e.id, state: e.state, agreement: agreement } },
      h('div', { class: 'exec-head' },
        mono(String(e.id || '')), ' on ', nodeName(e.node), ' ', stateBadge(e.state), ' ', agreeBadge,
        e.extra ? badge('extra', 'muted-badge', { title: 'an extra execution asked when results disagreed or nodes were lost' }) : null,
        e.exit_code !== null && e.exit_code !== undefined ? h('span', { class: 'muted' }, ' exit ' + e.exit_code) : null),
      h('ol', { class: 'timeline' + (approx ? ' approx' : ''), title: approx ? 'approximate: this node reports no timeline' : null },
        steps.map((s) => h('li', { class: 'step step-' + s.state.replace(/[^a-z_]/g, ''), dataset: { step: s.state } },
          h('span', { class: 'step-name' }, s.state.replace(/_/g, ' ')),
          h('span', { class: 'step-time', title: isoTime(s.ms) }, created && s.ms ? '+' + fmtDur(s.ms - created) : '\u2014')))),
      e.result ? h('div', { class: 'small' }, 'result ', h('a', { class: 'mono', href: browseHref(e.result, []), title: e.result }, shortId(e.result, 10, 8))) : null,
      e.error ? h('div', { class: 'small bad pre-wrap' }, String(e.error)) : null,
      meta ? h('div', { class: 'small muted' },
        meta.wall_ms !== undefined && meta.wall_ms !== null ? 'wall ' + fmtDur(meta.wall_ms) : null,
        meta.fuel !== undefined && meta.fuel !== null ? ' \u00b7 fuel ' + Number(meta.fuel).toLocaleString('en') : null,
        Array.isArray(meta.nn_devices) && meta.nn_devices.length ? ' \u00b7 devices ' + meta.nn_devices.map(String).join(', ') : null) : null);
  }

  // ---------------------------------------------------------------- browse

  /** Accepts CID, CID/path, /ipfs/CID/path and ipfs://CID/path. */
  function parseCidInput(s) {
    s = s.trim().replace(/^ipfs:\/\//i, '').replace(/^\/?ipfs\//i, '');
    const parts = s.split('/').filter((p) => p !== '');
    return { cid: parts[0] || '', segments: parts.slice(1) };
  }

  function browsePage(ctx, view, cid, segments) {
    const input = h('input', { id: 'browse-cid', type: 'text', spellcheck: 'false', autocomplete: 'off', placeholder: 'CID or CID/path', value: cid ? [cid].concat(segments).join('/') : '' });
    const form = h('form', { id: 'browse-form', class: 'inline-form' },
      h('label', { for: 'browse-cid', class: 'sr-only' }, 'CID'), input,
      h('button', { type: 'submit', id: 'browse-open' }, 'Open'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const p = parseCidInput(input.value);
      if (p.cid) location.hash = browseHref(p.cid, p.segments);
    });
    const err = errorBox('browse-error');
    add(view, h('div', { class: 'page-head' }, h('h1', null, 'Browse')), form);
    if (!cid) {
      add(view, h('p', { class: 'muted' }, 'Open any CID the network holds: a job\u2019s result, a module, a dataset. Results hold exitCode, stdout, stderr and outputs/.'));
      ready(view);
      return;
    }
    const crumbs = h('nav', { id: 'browse-crumbs', class: 'crumbs', 'aria-label': 'path' },
      h('a', { href: browseHref(cid, []), class: 'mono', title: cid }, shortId(cid, 10, 8)),
      segments.map((s, i) => [h('span', { class: 'sep' }, ' / '),
        i === segments.length - 1 ? h('span', { class: 'mono current' }, s) : h('a', { class: 'mono', href: browseHref(cid, segments.slice(0, i + 1)) }, s)]));
    const info = h('div', { id: 'browse-info', class: 'info-bar' }, h('span', { class: 'muted' }, 'Loading\u2026'));
    const body = h('div', { id: 'browse-body' });
    add(view, crumbs, err, info, body);
    const rel = segments.length ? '/' + encPath(segments) : '';
    (async () => {
      let ls;
      try {
        ls = await apiJson('/v1/ls/' + encodeURIComponent(cid) + rel, { signal: ctx.signal });
      } catch (e) {
        if (!ctx.alive || isAbort(e)) return;
        clear(info);
        setError(err, e);
        ready(view);
        return;
      }
      if (!ctx.alive) return;
      const here = typeof ls.cid === 'string' ? ls.cid : cid;
      const name = segments.length ? segments[segments.length - 1] : here;
      const carBtn = h('button', { type: 'button', id: 'download-car', class: 'secondary', title: 'the whole DAG as a CARv1 file' }, 'Download CAR');
      carBtn.addEventListener('click', () => download('/v1/car/' + encodeURIComponent(here), here + '.car', carBtn));
      replace(info,
        badge(String(ls.kind || '?'), 'kind-badge'),
        h('span', { class: 'mono', title: here }, here),
        ls.size !== null && ls.size !== undefined ? h('span', { class: 'muted' }, fmtBytes(ls.size)) : null,
        h('span', { class: 'spacer' }),
        ls.kind === 'file' ? (() => {
          const b = h('button', { type: 'button', id: 'download-file' }, 'Download file');
          b.addEventListener('click', () => download('/v1/cat/' + encodeURIComponent(cid) + rel + '?download=1', name, b));
          return b;
        })() : null,
        carBtn);
      if (ls.kind === 'directory') {
        const entries = Array.isArray(ls.entries) ? ls.entries : [];
        add(body, h('div', { class: 'table-wrap' }, h('table', { id: 'browse-list', class: 'grid' },
          h('thead', null, h('tr', null, h('th', null, 'Name'), h('th', null, 'Kind'), h('th', { class: 'num' }, 'Size'), h('th', null, 'CID'))),
          h('tbody', null,
            segments.length ? h('tr', { class: 'up' }, h('td', { colspan: 4 }, h('a', { href: browseHref(cid, segments.slice(0, -1)) }, '\u2191 ..'))) : null,
            entries.map((en) => h('tr', { dataset: { entry: String(en.name), kind: String(en.kind) } },
              h('td', null, h('a', { class: 'entry-link kind-' + String(en.kind).replace(/[^a-z]/g, ''), href: browseHref(cid, segments.concat([String(en.name)])) }, String(en.name) + (en.kind === 'directory' ? '/' : ''))),
              h('td', { class: 'muted' }, String(en.kind)),
              h('td', { class: 'num' }, en.size !== null && en.size !== undefined ? fmtBytes(en.size) : '\u2014'),
              h('td', null, mono(shortId(String(en.cid || ''), 8, 6), String(en.cid || ''))))),
            entries.length ? null : h('tr', null, h('td', { colspan: 4, class: 'muted' }, 'Empty directory.'))))),
        ls.truncated ? h('p', { class: 'warn' }, 'The listing was cut short: the directory has more entries.') : null);
      } else if (ls.kind === 'file') {
        const preview = h('div', { id: 'preview', class: 'preview', dataset: { kind: 'loading' } }, h('p', { class: 'muted' }, 'Loading preview\u2026'));
        add(body, preview);
        await showPreview(ctx, preview, '/v1/cat/' + encodeURIComponent(cid) + rel, name, ls.size);
      } else {
        add(body, h('p', { class: 'muted' }, 'A ' + String(ls.kind) + ': nothing to show.'));
      }
      ready(view);
    })();
  }

  const TEXT_EXT = /\.(txt|tsv|csv|log|md|json|ya?ml|toml|ini|c|h|rs|py|js|ts|css|html?|xml|svg|sh|wat|out|err)$/i;
  const IMAGE_EXT = /\.(png|jpe?g|gif|webp|bmp|ico|svg)$/i;

  async function showPreview(ctx, preview, url, name, size) {
    const note = (text) => h('p', { id: 'preview-note', class: 'muted small' }, text);
    let resp;
    try {
      resp = await api(url, { signal: ctx.signal });
    } catch (e) {
      if (!ctx.alive || isAbort(e)) return;
      preview.dataset.kind = 'error';
      replace(preview, h('p', { class: 'error' }, 'No preview: ' + errText(e)));
      return;
    }
    const type = (resp.headers.get('Content-Type') || '').toLowerCase().split(';')[0].trim();
    const body = bodyReader(resp);
    ctx.onCleanup(() => body.cancel());
    const tooBig = (what) => {
      body.cancel();
      preview.dataset.kind = 'binary';
      replace(preview, note(what + ' of ' + fmtBytes(size) + ': too large to preview here; download it.'));
    };
    try {
      let image = type.startsWith('image/') ? type : (IMAGE_EXT.test(name) && !type.startsWith('text/') ? 'image/' + name.replace(/^.*\./, '').toLowerCase().replace('jpg', 'jpeg').replace('svg', 'svg+xml') : null);
      if (image && size > IMAGE_CAP) return tooBig('An image');
      let { bytes, truncated } = await body.readUpTo(image ? IMAGE_CAP : PREVIEW_CAP);
      if (!ctx.alive) return;
      if (!image && (image = sniffImage(bytes))) {
        if (size > IMAGE_CAP) return tooBig('An image');
        if (truncated) ({ bytes, truncated } = await body.readUpTo(IMAGE_CAP));
        if (!ctx.alive) return;
      }
      body.cancel();
      if (bytes.length === 0) {
        preview.dataset.kind = 'empty';
        replace(preview, note('An empty file.'));
        return;
      }
      if (image) {
        if (truncated) return tooBig('An image');
        const objUrl = URL.createObjectURL(new Blob([bytes], { type: image }));
        ctx.onCleanup(() => URL.revokeObjectURL(objUrl));
        preview.dataset.kind = 'image';
        const img = h('img', { id: 'preview-image', src: objUrl, alt: name });
        img.addEventListener('error', () => { preview.dataset.kind = 'binary'; replace(preview, note('Not an image this browser can show (' + image + '); download it.')); });
        replace(preview, img, note(image + ', ' + fmtBytes(bytes.length)));
        return;
      }
      const textual = type.startsWith('text/') || /json|xml|yaml|javascript/.test(type) || TEXT_EXT.test(name);
      let text = null;
      if (textual || !bytes.subarray(0, 8192).includes(0)) {
        try { text = new TextDecoder('utf-8', { fatal: !textual }).decode(bytes, { stream: truncated }); } catch (e) { text = null; }
      }
      if (text === null) {
        preview.dataset.kind = 'binary';
        replace(preview, note('Binary data (' + (type || 'unknown type') + (size !== null && size !== undefined ? ', ' + fmtBytes(size) : '') + '): download it to look inside.'));
        return;
      }
      preview.dataset.kind = 'text';
      replace(preview,
        h('pre', { id: 'preview-text', class: 'code' }, text),
        truncated ? note('Preview cut at ' + fmtBytes(PREVIEW_CAP) + (size ? ' of ' + fmtBytes(size) : '') + '; download the file for the rest.') : null);
    } catch (e) {
      if (!ctx.alive || isAbort(e)) return;
      preview.dataset.kind = 'error';
      replace(preview, h('p', { class: 'error' }, 'No preview: ' + errText(e)));
    }
  }

  // ---------------------------------------------------------------- submit

  /** Splits arguments on whitespace, honouring '...' and "..." quoting and backslash escapes. */
  function splitArgs(s) {
    const out = []; let cur = ''; let inArg = false; let quote = null;
    for (let i = 0; i < s.length; i++) {
      const c = s[i];
      if (quote) {
        if (c === quote) quote = null;
        else if (c === '\\' && quote === '"' && i + 1 < s.length) cur += s[++i];
        else cur += c;
      } else if (c === '"' || c === "'") { quote = c; inArg = true; }
      else if (c === '\\' && i + 1 < s.length) { cur += s[++i]; inArg = true; }
      else if (/\s/.test(c)) { if (inArg) { out.push(cur); cur = ''; inArg = false; } }
      else { cur += c; inArg = true; }
    }
    if (quote) throw new Error('args: unclosed ' + quote + ' quote');
    if (inArg) out.push(cur);
    return out;
  }

  function parseEnv(text) {
    const env = {};
    text.split('\n').forEach((raw, i) => {
      const line = raw.replace(/\r$/, '');
      if (!line.trim() || line.trim().startsWith('#')) return;
      const eq = line.indexOf('=');
      if (eq <= 0) throw new Error('env line ' + (i + 1) + ': write NAME=VALUE');
      const k = line.slice(0, eq).trim();
      if (!k) throw new Error('env line ' + (i + 1) + ': empty name');
      env[k] = line.slice(eq + 1);
    });
    return env;
  }

  function submitPage(ctx, view) {
    const inputs = []; // File objects, in order
    const moduleInput = h('input', { id: 'submit-module', type: 'file', accept: '.wasm,application/wasm', required: true });
    const filesInput = h('input', { id: 'submit-inputs', type: 'file', multiple: true });
    const inputList = h('ul', { id: 'submit-input-list', class: 'file-list' });
    const args = h('input', { id: 'submit-args', type: 'text', spellcheck: 'false', autocomplete: 'off', placeholder: 'e.g. /inputs --verbose' });
    const env = h('textarea', { id: 'submit-env', rows: 3, spellcheck: 'false', placeholder: 'NAME=value, one per line' });
    const redundancy = h('input', { id: 'submit-redundancy', type: 'number', min: 1, step: 1, value: 1 });
    const quorum = h('input', { id: 'submit-quorum', type: 'number', min: 1, step: 1, placeholder: 'majority' });
    const button = h('button', { type: 'submit', id: 'submit-button' }, 'Upload and submit');
    const status = h('div', { id: 'submit-status', class: 'muted', 'aria-live': 'polite' });
    const err = errorBox('submit-error');

    function renderInputs() {
      replace(inputList, inputs.length
        ? inputs.map((f, i) => h('li', { dataset: { input: f.name } },
          h('span', { class: 'mono' }, f.name), h('span', { class: 'muted' }, ' ' + fmtBytes(f.size) + ' \u2192 '),
          h('span', { class: 'mono' }, '/inputs/' + f.name), ' ',
          h('button', { type: 'button', class: 'small secondary', 'aria-label': 'remove ' + f.name, onclick: () => { inputs.splice(i, 1); renderInputs(); } }, 'Remove')))
        : h('li', { class: 'muted small' }, 'No inputs: the job gets no /inputs.'));
    }
    filesInput.addEventListener('change', () => {
      for (const f of filesInput.files) {
        const at = inputs.findIndex((g) => g.name === f.name);
        if (at >= 0) inputs[at] = f; else inputs.push(f);
      }
      filesInput.value = '';
      renderInputs();
    });
    renderInputs();

    const form = h('form', { id: 'submit-form', class: 'card form', novalidate: true },
      h('div', { class: 'field' }, h('label', { for: 'submit-module' }, 'Wasm module'), moduleInput,
        h('p', { class: 'hint' }, 'A WASI preview 1 command module (.wasm).')),
      h('div', { class: 'field' }, h('label', { for: 'submit-inputs' }, 'Input files'), filesInput, inputList,
        h('p', { class: 'hint' }, 'Each file is uploaded and mounted read-only at /inputs/<name>. Pick files as often as you like.')),
      h('div', { class: 'field' }, h('label', { for: 'submit-args' }, 'Arguments'), args,
        h('p', { class: 'hint' }, 'Separated by spaces; quote an argument with spaces in it.')),
      h('div', { class: 'field' }, h('label', { for: 'submit-env' }, 'Environment'), env),
      h('div', { class: 'field-row' },
        h('div', { class: 'field' }, h('label', { for: 'submit-redundancy' }, 'Redundancy (nodes)'), redundancy),
        h('div', { class: 'field' }, h('label', { for: 'submit-quorum' }, 'Quorum'), quorum)),
      h('p', { class: 'hint' }, 'With redundancy N the job runs on N distinct nodes; it completes when a quorum of them agree on the result CID.'),
      h('div', { class: 'actions' }, button, status));
    const aside = h('aside', { class: 'card help' },
      h('h2', null, 'How a job runs'),
      h('ol', null,
        h('li', null, 'The module and each input file are uploaded to this node and pinned there; each is named by its CID.'),
        h('li', null, 'The job is placed on nodes that have room. Each runs it in the Wasm sandbox: inputs read-only under /inputs, a private /outputs, no network.'),
        h('li', null, 'Each node commits to a hash of its result before any reveals it; the job completes when a quorum agrees on one result CID.'),
        h('li', null, 'The result is a directory: exitCode, stdout, stderr and outputs/. A guest that exits non-zero still completes, with the outcome failed.')),
      h('p', { class: 'hint' }, 'Limits, constraints and models: submit a full spec with the CLI (shoal submit -f job.yaml).'));
    add(view, h('div', { class: 'page-head' }, h('h1', null, 'Submit a job')), err, h('div', { class: 'submit-layout' }, form, aside));
    ready(view);

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      setError(err, null);
      let spec;
      const mod = moduleInput.files && moduleInput.files[0];
      try {
        if (!mod) throw new Error('choose a .wasm module');
        const count = Number(redundancy.value || '1');
        if (!Number.isInteger(count) || count < 1) throw new Error('redundancy must be a whole number of at least 1');
        let q = null;
        if (quorum.value !== '') {
          q = Number(quorum.value);
          if (!Number.isInteger(q) || q < 1) throw new Error('quorum must be a whole number of at least 1');
          if (q > count) throw new Error('quorum cannot be above redundancy (' + count + ')');
        }
        const names = new Set();
        for (const f of inputs) {
          if (names.has(f.name)) throw new Error('two inputs are named ' + f.name);
          names.add(f.name);
        }
        spec = {
          task: { module: null, args: splitArgs(args.value), env: parseEnv(env.value), inputs: [] },
          redundancy: { count: count, quorum: q },
        };
      } catch (e) {
        setError(err, e.message);
        return;
      }
      button.disabled = true;
      try {
        const upload = async (file, what) => {
          status.textContent = 'Uploading ' + what + ' ' + file.name + ' (' + fmtBytes(file.size) + ')\u2026';
          const r = await apiJson('/v1/files?name=' + encodeURIComponent(file.name), {
            method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: file, signal: ctx.signal,
          });
          if (!r || typeof r.cid !== 'string') throw new Error('the node gave no CID for ' + file.name);
          return r.cid;
        };
        spec.task.module = await upload(mod, 'module');
        for (const f of inputs) spec.task.inputs.push({ cid: await upload(f, 'input'), mount: '/inputs/' + f.name });
        status.textContent = 'Submitting\u2026';
        const res = await postJson('/v1/jobs', spec, ctx.signal);
        if (!res || typeof res.id !== 'string') throw new Error('the node accepted the job but gave no id');
        const w = Array.isArray(res.warnings) ? res.warnings.map(String) : [];
        if (w.length) submitWarnings.set(res.id, w);
        status.textContent = 'Submitted ' + res.id;
        location.hash = '#/jobs/' + encodeURIComponent(res.id);
      } catch (e) {
        if (!ctx.alive || isAbort(e)) return;
        status.textContent = '';
        setError(err, 'Not submitted: ' + errText(e));
      } finally {
        button.disabled = false;
      }
    });
  }

  // ---------------------------------------------------------------- start

  function start() {
    setupToken();
    window.addEventListener('hashchange', route);
    if (!location.hash || location.hash === '#' || location.hash === '#/') history.replaceState(null, '', '#/nodes');
    refreshHealth();
    setInterval(refreshHealth, 15000);
    route();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
