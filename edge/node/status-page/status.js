// The status page's script (served as a file: the page's CSP allows no inline script).
// Signs in once with the admin token (the node sets an HttpOnly session cookie), then polls
// GET /_edge/stats and draws it. Values go into the page as text, never as HTML.
(function () {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  // ?every=<seconds> polls faster or slower (the ring buffer holds one point per 5 s).
  const every = Math.max(1, Number(params.get('every')) || 5) * 1000;
  let csrf = null;
  let timer = null;
  let charts = null;
  let objectsCursor = null;

  // ---------------------------------------------------------------- formatting
  const nf = new Intl.NumberFormat('en');
  const num = (n) => nf.format(Math.round(n));
  function bytes(n) {
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? Math.round(n) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
  }
  const pct = (x) => (x === null ? '–' : (x * 100).toFixed(1) + ' %');
  const time = (ms) => new Date(ms).toLocaleTimeString();
  function duration(seconds) {
    if (seconds < 120) return Math.round(seconds) + ' s';
    if (seconds < 7200) return Math.round(seconds / 60) + ' min';
    return (seconds / 3600).toFixed(1) + ' h';
  }
  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }
  function row(cells) {
    const tr = document.createElement('tr');
    for (const cell of cells) tr.append(cell instanceof Node ? cell : el('td', cell));
    return tr;
  }
  function setFigure(id, text, value) {
    const node = $(id);
    node.textContent = text;
    if (value !== undefined) node.dataset.value = String(value);
  }

  // ---------------------------------------------------------------- API
  async function api(path, init) {
    const options = Object.assign({ credentials: 'same-origin' }, init || {});
    options.headers = Object.assign({}, options.headers || {});
    if (options.method && options.method !== 'GET' && csrf) options.headers['x-edge-csrf'] = csrf;
    const response = await fetch(path, options);
    if (response.status === 401) {
      showLogin();
      throw new Error('Signed out');
    }
    const body = response.status === 204 ? null : await response.json();
    if (!response.ok) throw new Error((body && body.message) || 'HTTP ' + response.status);
    return body;
  }

  // ---------------------------------------------------------------- session
  function showLogin(message) {
    csrf = null;
    if (timer) clearInterval(timer);
    timer = null;
    $('dashboard').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('token').focus();
  }
  function showDashboard(session) {
    csrf = session.csrf;
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('logout').hidden = false;
    refresh();
    loadObjects(true);
    if (!timer) timer = setInterval(refresh, every);
  }
  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const response = await fetch('/_edge/login', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token: $('token').value }),
    });
    const body = await response.json();
    if (!response.ok) {
      $('login-error').textContent = body.message || 'Sign-in failed.';
      return;
    }
    $('token').value = '';
    showDashboard(body);
  });
  $('logout').addEventListener('click', async () => {
    await fetch('/_edge/logout', { method: 'POST', credentials: 'same-origin' });
    showLogin();
  });

  // ---------------------------------------------------------------- charts
  function chartWidth(id) {
    return Math.max(280, $(id).clientWidth);
  }
  function makeCharts() {
    const axisFont = '12px system-ui, sans-serif';
    const base = (id) => ({ width: chartWidth(id), height: 220, legend: { live: false }, cursor: { drag: { x: false, y: false } } });
    const requests = new uPlot(
      Object.assign(base('chart-requests'), {
        scales: { x: { time: true }, rps: { auto: true, range: (u, min, max) => [0, Math.max(1, max)] }, ratio: { auto: false, range: [0, 100] } },
        series: [
          {},
          { label: 'Requests/s', scale: 'rps', stroke: '#2f6fed', fill: 'rgba(47,111,237,0.12)', width: 1.5, value: (u, v) => (v === null ? '–' : v.toFixed(2)) },
          { label: 'Hit ratio %', scale: 'ratio', stroke: '#1f9d55', width: 1.5, spanGaps: false, value: (u, v) => (v === null ? '–' : v.toFixed(1) + ' %') },
        ],
        axes: [
          { font: axisFont },
          { scale: 'rps', font: axisFont, size: 50 },
          { scale: 'ratio', side: 1, font: axisFont, size: 55, grid: { show: false }, values: (u, ticks) => ticks.map((t) => t + '%') },
        ],
      }),
      [[], [], []],
      $('chart-requests'),
    );
    const traffic = new uPlot(
      Object.assign(base('chart-bytes'), {
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1024, max)] } },
        series: [
          {},
          { label: 'Served', stroke: '#2f6fed', fill: 'rgba(47,111,237,0.12)', width: 1.5, value: (u, v) => (v === null ? '–' : bytes(v) + '/s') },
          { label: 'From origin', stroke: '#d97706', fill: 'rgba(217,119,6,0.10)', width: 1.5, value: (u, v) => (v === null ? '–' : bytes(v) + '/s') },
        ],
        axes: [{ font: axisFont }, { font: axisFont, size: 70, values: (u, ticks) => ticks.map((t) => bytes(t)) }],
      }),
      [[], [], []],
      $('chart-bytes'),
    );
    window.addEventListener('resize', () => {
      requests.setSize({ width: chartWidth('chart-requests'), height: 220 });
      traffic.setSize({ width: chartWidth('chart-bytes'), height: 220 });
    });
    return { requests, traffic };
  }

  // ---------------------------------------------------------------- rendering
  const sum = (values, from) => values.slice(from || 0).reduce((a, b) => a + b, 0);

  function render(stats) {
    const s = stats.series;
    const seconds = stats.intervalMs / 1000;
    $('node-name').textContent = stats.name;
    $('updated').textContent = 'updated ' + time(stats.at);

    // Summary figures.
    const lastMinute = Math.max(1, Math.round(60 / seconds));
    const rps = sum(s.requests, -lastMinute) / (lastMinute * seconds);
    setFigure('fig-rps', rps.toFixed(rps < 10 ? 2 : 0), rps);
    const cacheable = sum(s.hits) + sum(s.revalidated) + sum(s.misses);
    const ratio = cacheable === 0 ? null : sum(s.hits) / cacheable;
    setFigure('fig-hit', pct(ratio), ratio === null ? '' : ratio);
    const served = sum(s.bytesServed);
    const fetched = sum(s.originBytes);
    const offload = served === 0 ? null : Math.max(0, 1 - fetched / served);
    setFigure('fig-offload', pct(offload), offload === null ? '' : offload);
    $('fig-offload-note').textContent = bytes(served) + ' served, ' + bytes(fetched) + ' from origin';
    setFigure('fig-requests', num(stats.totals.requests), stats.totals.requests);
    $('fig-requests-note').textContent = 'since start, ' + num(stats.totals.hits) + ' hits, ' + num(stats.totals.misses) + ' misses';

    // Charts: the x axis in seconds, one point per interval.
    const xs = s.requests.map((_, i) => (s.start + i * stats.intervalMs) / 1000);
    if (typeof uPlot === 'function') {
      charts = charts || makeCharts();
      charts.requests.setData([
        xs,
        s.requests.map((n) => n / seconds),
        s.requests.map((_, i) => {
          const total = s.hits[i] + s.revalidated[i] + s.misses[i];
          return total === 0 ? null : (100 * s.hits[i]) / total;
        }),
      ]);
      charts.traffic.setData([xs, s.bytesServed.map((n) => n / seconds), s.originBytes.map((n) => n / seconds)]);
    }

    // Tiers.
    const tiers = $('tiers');
    tiers.replaceChildren();
    for (const tier of stats.tiers) {
      const fill = tier.maxBytes > 0 ? tier.bytes / tier.maxBytes : 0;
      const box = el('div', null, 'tier');
      box.dataset.tier = tier.name;
      const head = el('div', null, 'head');
      head.append(el('span', tier.name + ' tier, ' + num(tier.entries) + ' entries'), el('span', bytes(tier.bytes) + ' of ' + bytes(tier.maxBytes)));
      const meter = el('div', null, 'meter');
      const bar = el('div', null, fill > 0.9 ? 'high' : '');
      // A sliver for any content at all, so a nearly empty tier does not look unused.
      bar.style.width = (fill > 0 ? Math.min(100, Math.max(1, fill * 100)) : 0).toFixed(1) + '%';
      meter.append(bar);
      meter.setAttribute('role', 'meter');
      meter.setAttribute('aria-valuenow', String(Math.round(fill * 100)));
      box.append(head, meter);
      tiers.append(box);
    }

    // Work in progress: collapsed origin fetches and the image queue.
    const work = $('work');
    work.replaceChildren();
    const pair = (name, value) => work.append(el('dt', name), el('dd', value));
    pair('Origin fetches in flight', num(stats.inFlight.flights) + ' (' + num(stats.inFlight.waiters) + ' waiting on them)');
    if (stats.images) {
      pair('Image transforms running', num(stats.images.running) + ' of ' + num(stats.images.concurrency));
      pair('Image transforms queued', num(stats.images.queued) + ' of ' + num(stats.images.maxQueue));
    } else pair('Image transforms', 'off');
    pair('Errors (5xx), last hour', num(sum(s.errors)));
    pair('Passed to origin, last hour', num(sum(s.passes)));

    // Origins.
    const origins = $('origins');
    origins.replaceChildren();
    if (stats.origins.length === 0) origins.append(el('p', 'One origin, no pool or shields: nothing to report beyond the traffic above.', 'empty'));
    else {
      const table = el('table', null, 'list');
      const head = row(['', 'Status', 'In flight', 'Requests', 'Failures'].map((h, i) => el('th', h, i > 1 ? 'num' : '')));
      const body = document.createElement('tbody');
      for (const o of stats.origins) {
        const state = !o.healthy ? ['down', 'down'] : !o.available ? ['ejected', 'out'] : ['up', 'up'];
        const name = el('td', (o.kind === 'shield' ? 'shield ' : o.group ? o.group + ': ' : '') + o.url, 'url');
        if (o.lastError) name.title = o.lastError;
        body.append(row([name, el('td', state[0], 'state ' + state[1]), el('td', o.inFlight === null ? '–' : num(o.inFlight), 'num'), el('td', num(o.requests), 'num'), el('td', num(o.failures), 'num')]));
      }
      const thead = document.createElement('thead');
      thead.append(head);
      table.append(thead, body);
      origins.append(table);
    }

    // Top URLs.
    const top = (id, entries, what) => {
      const body = $(id);
      body.replaceChildren();
      if (entries.length === 0) body.append(row([el('td', 'No ' + what + ' yet.', 'empty'), el('td', '')]));
      for (const entry of entries) body.append(row([el('td', entry.key, 'url'), el('td', (entry.error > 0 ? '≤ ' : '') + num(entry.count), 'num')]));
    };
    top('top-requests', stats.top.requests, 'requests');
    top('top-misses', stats.top.misses, 'misses');

    // Purges.
    const purges = $('purges');
    purges.replaceChildren();
    if (stats.purges.length === 0) purges.append(el('li', 'No purges since start.', 'empty'));
    for (const p of stats.purges) {
      const what = p.kind === 'all' ? 'everything' : p.kind + ' ' + p.targets.join(', ');
      purges.append(el('li', time(p.at) + ': ' + (p.soft ? 'soft purge of ' : 'purge of ') + what + ', ' + num(p.purged) + ' entries'));
    }

    // Workers (cluster mode).
    $('workers-card').hidden = stats.workers.length < 2;
    const workers = $('workers');
    workers.replaceChildren();
    for (const w of stats.workers) {
      workers.append(row([el('td', w.pid), el('td', duration((stats.at - w.startedAt) / 1000), 'num'), el('td', num(w.requests), 'num')]));
    }
  }

  async function refresh() {
    try {
      render(await api('/_edge/stats'));
    } catch (error) {
      if (csrf) $('updated').textContent = 'update failed: ' + error.message;
    }
  }

  // ---------------------------------------------------------------- purge form
  $('purge-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const kind = $('purge-kind').value;
    const targets = $('purge-targets').value.split('\n').map((line) => line.trim()).filter(Boolean);
    const request = kind === 'all' ? { all: true } : { [kind]: targets };
    if ($('purge-soft').checked) request.soft = true;
    await purge(request);
  });
  async function purge(request) {
    const result = $('purge-result');
    result.className = '';
    result.textContent = 'Purging…';
    try {
      const answer = await api('/_edge/purge', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(request) });
      result.textContent = 'Purged ' + num(answer.purged) + (answer.purged === 1 ? ' entry.' : ' entries.');
      result.dataset.purged = String(answer.purged);
      refresh();
      loadObjects(true);
    } catch (error) {
      result.className = 'error';
      result.textContent = error.message;
    }
  }

  // ---------------------------------------------------------------- objects
  async function loadObjects(fresh) {
    const query = new URLSearchParams({ limit: '50' });
    const prefix = $('objects-prefix').value.trim();
    if (prefix) query.set('prefix', prefix);
    if (!fresh && objectsCursor) query.set('cursor', objectsCursor);
    const body = $('objects');
    try {
      const page = await api('/_edge/objects?' + query);
      if (fresh) body.replaceChildren();
      for (const o of page.objects) {
        const button = el('button', 'Purge', 'small');
        button.type = 'button';
        button.addEventListener('click', () => purge({ urls: [o.path] }));
        body.append(row([el('td', o.path + (o.pushed ? ' (pushed)' : '') + (o.invalidated ? ' (stale)' : ''), 'url'), el('td', bytes(o.size), 'num'), el('td', o.contentType || ''), el('td', o.storedAt ? time(Date.parse(o.storedAt)) : ''), el('td', o.expiresAt ? new Date(o.expiresAt).toLocaleString() : ''), button]));
      }
      if (fresh && page.objects.length === 0) body.append(row([el('td', 'Nothing stored' + (prefix ? ' under ' + prefix : '') + '.', 'empty')]));
      objectsCursor = page.next;
      $('objects-more').hidden = !page.next;
    } catch (error) {
      body.replaceChildren(row([el('td', error.message, 'error')]));
    }
  }
  $('objects-form').addEventListener('submit', (event) => {
    event.preventDefault();
    loadObjects(true);
  });
  $('objects-more').addEventListener('click', () => loadObjects(false));

  // ---------------------------------------------------------------- start
  fetch('/_edge/session', { credentials: 'same-origin' }).then(async (response) => {
    const session = response.ok ? await response.json() : { signedIn: false };
    if (session.signedIn) showDashboard(session);
    else showLogin();
  }, () => showLogin('The node did not answer.'));
})();
