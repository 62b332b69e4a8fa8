// stockade host status page (GET /ui): docs/host-api.md, "Status page";
// docs/adr/0021-web-status-page.md.
//
// Rules this file keeps:
// * Everything shown comes from the host, which is untrusted: it is put on
//   the page as text only (textContent, createTextNode, attribute values),
//   never through innerHTML, insertAdjacentHTML or document.write.
// * The bearer token lives in sessionStorage (this tab only) and leaves the
//   page only in the Authorization header of fetch() calls to this origin.
// * The page reads Keep metadata only (GET /v1/keeps, GET /v1/host): the
//   host holds no workload output, stdin, environment or secrets in clear,
//   and the page asks for nothing else (no logs).
'use strict';

(function () {
  const TOKEN_KEY = 'stockade.token';
  const REFRESH_MS = 3000;
  const MAX_SAMPLES = 120;
  const ACTIVE = ['created', 'attesting', 'running'];
  const STATES = ACTIVE.concat(['exited', 'failed', 'killed', 'lost']);
  // Backends whose Keeps have no hardware protection (docs/threat-model.md).
  const UNPROTECTED = ['sim', 'sim-snp', 'sim-tdx', 'vm', 'nil'];

  // -- CBOR (RFC 8949), the subset the API sends -----------------------------
  // Definite lengths only, no tags; maps become null-prototype objects with
  // text (or integer, as text) keys. Anything else is refused.

  const MAX_DEPTH = 16;

  function decodeCbor(buffer) {
    const bytes = new Uint8Array(buffer);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const text = new TextDecoder('utf-8', { fatal: true });
    let pos = 0;

    function need(n) {
      if (n > bytes.length - pos) throw new Error('CBOR: truncated');
    }
    function argument(info) {
      if (info < 24) return info;
      if (info === 24) { need(1); pos += 1; return bytes[pos - 1]; }
      if (info === 25) { need(2); pos += 2; return view.getUint16(pos - 2); }
      if (info === 26) { need(4); pos += 4; return view.getUint32(pos - 4); }
      if (info === 27) {
        need(8);
        const big = view.getBigUint64(pos);
        pos += 8;
        return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
      }
      throw new Error('CBOR: indefinite length or reserved value');
    }
    function count(info) {
      const n = argument(info);
      if (typeof n !== 'number' || n > bytes.length - pos) throw new Error('CBOR: length beyond the data');
      return n;
    }
    function item(depth) {
      if (depth > MAX_DEPTH) throw new Error('CBOR: nested too deep');
      need(1);
      const initial = bytes[pos];
      pos += 1;
      const major = initial >> 5;
      const info = initial & 0x1f;
      switch (major) {
        case 0: return argument(info);
        case 1: {
          const n = argument(info);
          return typeof n === 'bigint' ? -1n - n : -1 - n;
        }
        case 2: {
          const n = count(info);
          pos += n;
          return bytes.slice(pos - n, pos);
        }
        case 3: {
          const n = count(info);
          pos += n;
          try {
            return text.decode(bytes.subarray(pos - n, pos));
          } catch (err) {
            throw new Error('CBOR: text is not valid UTF-8');
          }
        }
        case 4: {
          const n = count(info);
          const out = [];
          for (let i = 0; i < n; i += 1) out.push(item(depth + 1));
          return out;
        }
        case 5: {
          const n = count(info);
          const out = Object.create(null);
          for (let i = 0; i < n; i += 1) {
            const key = item(depth + 1);
            if (typeof key !== 'string' && typeof key !== 'number') throw new Error('CBOR: map key not text');
            const name = String(key);
            if (Object.prototype.hasOwnProperty.call(out, name)) throw new Error('CBOR: duplicate map key');
            out[name] = item(depth + 1);
          }
          return out;
        }
        case 7: {
          if (info === 20) return false;
          if (info === 21) return true;
          if (info === 22) return null;
          if (info === 25) { need(2); pos += 2; return half(view.getUint16(pos - 2)); }
          if (info === 26) { need(4); pos += 4; return view.getFloat32(pos - 4); }
          if (info === 27) { need(8); pos += 8; return view.getFloat64(pos - 8); }
          throw new Error('CBOR: unsupported simple value');
        }
        default:
          throw new Error('CBOR: tags are not used by this API');
      }
    }
    function half(h) {
      const exp = (h >> 10) & 0x1f;
      const frac = h & 0x3ff;
      const sign = h & 0x8000 ? -1 : 1;
      if (exp === 0) return sign * frac * 2 ** -24;
      if (exp === 31) return frac ? NaN : sign * Infinity;
      return sign * (1 + frac / 1024) * 2 ** (exp - 15);
    }

    const value = item(0);
    if (pos !== bytes.length) throw new Error('CBOR: bytes after the item');
    return value;
  }

  // -- the API ---------------------------------------------------------------

  class Refused extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  function problemDetail(body) {
    // RFC 9290 concise problem details: -1 title, -2 detail.
    try {
      const pd = decodeCbor(body);
      if (pd && typeof pd === 'object') {
        const title = typeof pd['-1'] === 'string' ? pd['-1'] : '';
        const detail = typeof pd['-2'] === 'string' ? pd['-2'] : '';
        return [title, detail].filter(Boolean).join(': ');
      }
    } catch (err) {
      // fall through: the status alone
    }
    return '';
  }

  async function api(path, token) {
    const headers = { Accept: 'application/cbor' };
    if (token) headers.Authorization = 'Bearer ' + token;
    const resp = await fetch(path, {
      headers,
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
      referrerPolicy: 'no-referrer',
    });
    const body = await resp.arrayBuffer();
    if (!resp.ok) throw new Refused(resp.status, problemDetail(body));
    return decodeCbor(body);
  }

  // -- formatting (text only) ------------------------------------------------

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function duration(seconds) {
    if (!Number.isFinite(seconds)) return '?';
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }

  function bytesText(n) {
    if (typeof n === 'bigint') return String(n) + ' B';  // beyond 2^53: exact, unscaled
    if (typeof n !== 'number') return String(n);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = n;
    let i = 0;
    while (v >= 1024 && i < units.length - 1 && v % 1024 === 0) { v /= 1024; i += 1; }
    return v + ' ' + units[i];
  }

  function limitsText(limits) {
    if (!limits || typeof limits !== 'object') return 'none';
    const parts = [];
    for (const key of Object.keys(limits)) {
      const v = limits[key];
      if (key === 'timeout_ms' && typeof v === 'number') parts.push('time ' + duration(v / 1000));
      else if (key === 'memory_bytes') parts.push('memory ' + bytesText(v));
      else if (key === 'output_bytes') parts.push('output ' + bytesText(v));
      else parts.push(key + ' ' + String(v));
    }
    return parts.length ? parts.join(', ') : 'none';
  }

  function backendCell(backend) {
    const td = el('td');
    td.appendChild(el('span', backend, 'mono'));
    if (UNPROTECTED.includes(backend)) td.appendChild(el('span', 'no hardware protection', 'unprotected'));
    return td;
  }

  function measurementCell(m) {
    const td = el('td');
    if (m instanceof Uint8Array) {
      const full = hex(m);
      const span = el('span', full.slice(0, 12) + '\u2026', 'mono measurement');
      span.title = full;
      td.appendChild(span);
    } else {
      td.textContent = '\u2014';
    }
    return td;
  }

  // -- rendering ---------------------------------------------------------------

  const samples = [];

  function hostNow(host) {
    const t = Date.parse(host && host.now);
    return Number.isFinite(t) ? t : Date.now();
  }

  function renderKeeps(keeps, now) {
    const tbody = document.querySelector('#keeps tbody');
    const rows = [];
    for (const k of keeps) {
      const tr = el('tr');
      tr.dataset.keepId = String(k.id);
      tr.appendChild(el('td', k.id, 'mono'));
      const state = String(k.state);
      tr.appendChild(el('td', state, 'state' + (STATES.includes(state) ? ' state-' + state : '')));
      tr.appendChild(backendCell(String(k.backend)));
      tr.appendChild(measurementCell(k.measurement));
      tr.appendChild(el('td', duration((now - Date.parse(k.created_at)) / 1000)));
      tr.appendChild(el('td', limitsText(k.limits)));
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
    document.getElementById('keeps-empty').hidden = keeps.length > 0;
  }

  function fact(dl, name, value) {
    dl.appendChild(el('dt', name));
    const dd = el('dd');
    if (value instanceof Node) dd.appendChild(value);
    else dd.textContent = String(value);
    dl.appendChild(dd);
  }

  function backendList(backends) {
    const span = el('span');
    for (const b of backends) {
      if (span.childNodes.length) span.appendChild(document.createTextNode(', '));
      span.appendChild(el('span', b, 'mono'));
      if (UNPROTECTED.includes(b)) span.appendChild(el('span', 'no hardware protection', 'unprotected'));
    }
    return span;
  }

  function renderHost(host) {
    const dl = document.getElementById('host-facts');
    dl.replaceChildren();
    fact(dl, 'stockade version', host.version);
    fact(dl, 'backends offered', backendList(Array.isArray(host.backends) ? host.backends : []));
    fact(dl, 'host clock', host.now);

    const fleet = document.getElementById('fleet');
    const f = host.fleet;
    if (f === null || f === undefined || typeof f !== 'object') {
      fleet.replaceChildren(el('p', 'Not in a fleet (this host serves direct deploys only).'));
      return;
    }
    const fdl = el('dl');
    fact(fdl, 'host id', f.host_id);
    fact(fdl, 'state', f.state);
    if (f.api_url !== undefined) fact(fdl, 'advertised API', f.api_url);
    fact(fdl, 'etcd endpoints', Array.isArray(f.endpoints) ? f.endpoints.join(', ') : '');
    if (f.lease_ttl_s !== undefined) fact(fdl, 'lease TTL', f.lease_ttl_s + ' s');
    if (f.last_refresh !== undefined) {
      fact(fdl, 'last lease refresh', f.last_refresh + ' (' + duration((hostNow(host) - Date.parse(f.last_refresh)) / 1000) + ' ago)');
    }
    if (f.last_error !== undefined) fact(fdl, 'last error', f.last_error);
    const labels = f.labels && typeof f.labels === 'object' ? Object.keys(f.labels) : [];
    if (labels.length) fact(fdl, 'labels', labels.map((k) => k + '=' + String(f.labels[k])).join(', '));
    fleet.replaceChildren(fdl);
  }

  const SVG = 'http://www.w3.org/2000/svg';

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function renderChart() {
    const W = 600, H = 190, L = 36, R = 12, T = 28, B = 26;
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Keeps over time' });
    const top = Math.max(1, ...samples.map((s) => Math.max(s.running, s.active)));
    const t0 = samples.length ? samples[0].t : 0;
    const t1 = samples.length ? samples[samples.length - 1].t : 0;
    const span = Math.max(1, t1 - t0);
    const x = (t) => L + ((t - t0) / span) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    root.appendChild(svg('line', { x1: L, y1: y(0), x2: W - R, y2: y(0), class: 'chart-axis' }));
    root.appendChild(svg('line', { x1: L, y1: T, x2: L, y2: y(0), class: 'chart-axis' }));
    root.appendChild(svg('text', { x: L - 6, y: y(top) + 4, 'text-anchor': 'end', class: 'chart-label' }, top));
    root.appendChild(svg('text', { x: L - 6, y: y(0) + 4, 'text-anchor': 'end', class: 'chart-label' }, 0));
    root.appendChild(svg('text', { x: L, y: H - 6, class: 'chart-label' }, '-' + duration(span / 1000)));
    root.appendChild(svg('text', { x: W - R, y: H - 6, 'text-anchor': 'end', class: 'chart-label' }, 'now'));
    for (const [key, cls] of [['active', 'chart-active'], ['running', 'chart-running']]) {
      const points = samples.map((s) => x(s.t).toFixed(1) + ',' + y(s[key]).toFixed(1)).join(' ');
      if (samples.length) root.appendChild(svg('polyline', { points, class: cls, 'data-series': key }));
    }
    const last = samples[samples.length - 1];
    const legend = last ? `running ${last.running}, active ${last.active}` : 'no samples yet';
    root.appendChild(svg('text', { x: W - R, y: 16, 'text-anchor': 'end', class: 'chart-label' }, legend));
    root.appendChild(svg('text', { x: L, y: 16, class: 'chart-label' }, 'solid: running, dashed: active'));
    document.getElementById('chart').replaceChildren(root);
  }

  // -- the refresh loop ------------------------------------------------------

  let timer = null;

  function showSignin(message) {
    clearTimeout(timer);
    timer = null;
    document.getElementById('status').hidden = true;
    document.getElementById('signin').hidden = false;
    const status = document.getElementById('auth-status');
    status.textContent = message || '';
    status.hidden = !message;
  }

  function refusal(err) {
    if (err.status === 401) return 'Refused by the host (401): a token is required.' + (err.message ? ' ' + err.message : '');
    if (err.status === 403) return 'Refused by the host (403): this token is not valid on this host.' + (err.message ? ' ' + err.message : '');
    return 'Refused by the host (' + err.status + ').' + (err.message ? ' ' + err.message : '');
  }

  async function refresh() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      showSignin('');
      return;
    }
    const error = document.getElementById('refresh-error');
    try {
      const [host, list] = await Promise.all([api('/v1/host', token), api('/v1/keeps', token)]);
      const keeps = Array.isArray(list.keeps) ? list.keeps : [];
      const now = hostNow(host);
      renderHost(host);
      renderKeeps(keeps, now);
      samples.push({
        t: Date.now(),
        running: keeps.filter((k) => k.state === 'running').length,
        active: keeps.filter((k) => ACTIVE.includes(k.state)).length,
      });
      if (samples.length > MAX_SAMPLES) samples.shift();
      renderChart();
      document.getElementById('refresh-status').textContent =
        'Updated ' + new Date().toLocaleTimeString() + '; refreshes every ' + REFRESH_MS / 1000 + ' s.';
      error.hidden = true;
    } catch (err) {
      if (err instanceof Refused && (err.status === 401 || err.status === 403)) {
        sessionStorage.removeItem(TOKEN_KEY);
        showSignin(refusal(err));
        return;
      }
      error.textContent = err instanceof Refused ? refusal(err) : 'Cannot read the host: ' + err.message;
      error.hidden = false;
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function start() {
    clearTimeout(timer);
    document.getElementById('signin').hidden = true;
    document.getElementById('status').hidden = false;
    samples.length = 0;
    refresh();
  }

  async function probe() {
    // No token yet: show what the host answers to a request without one.
    try {
      await api('/v1/host', null);
      showSignin('');
    } catch (err) {
      showSignin(err instanceof Refused ? refusal(err) : 'Cannot reach the host: ' + err.message);
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    const form = document.getElementById('token-form');
    const input = document.getElementById('token');
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const token = input.value.trim();
      input.value = '';
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      start();
    });
    document.getElementById('signout').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignin('Token forgotten.');
    });
    if (sessionStorage.getItem(TOKEN_KEY)) start();
    else probe();
  });
})();
