"""The console's two pages: plain HTML, CSS and JavaScript, no external assets."""

LOGIN_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shotnet console: sign in</title>
<style>
body { font-family: sans-serif; background: #1d2430; color: #eee; display: flex; height: 100vh;
       align-items: center; justify-content: center; margin: 0; }
form { background: #2a3342; padding: 2em; border-radius: 6px; min-width: 18em; }
label { display: block; margin-top: 0.8em; } input { width: 100%; padding: 0.4em; box-sizing: border-box; }
button { margin-top: 1.2em; padding: 0.5em 1.2em; } .error { color: #ff8a80; }
</style></head><body>
<form method="post" action="/login" id="login">
  <h2>shotnet console</h2>
  <p class="error">{{error}}</p>
  <input type="hidden" name="csrf" value="{{csrf}}">
  <label>Name <input name="user" id="user" autocomplete="username" required></label>
  <label>Password <input name="password" id="password" type="password" autocomplete="current-password" required></label>
  <button type="submit" id="signin">Sign in</button>
</form></body></html>
"""

APP_HTML = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shotnet console</title>
<style>
* { box-sizing: border-box; }
body { margin: 0; font-family: sans-serif; background: #1d2430; color: #e8e8e8; height: 100vh; display: flex;
       flex-direction: column; }
header { padding: 0.4em 1em; background: #111722; display: flex; align-items: center; gap: 1em; }
header .who { margin-left: auto; font-size: 0.9em; color: #aab; }
main { flex: 1; display: flex; min-height: 0; }
#list { width: 19em; overflow-y: auto; border-right: 1px solid #333; }
#list .inc { padding: 0.5em 0.8em; border-bottom: 1px solid #333; cursor: pointer; }
#list .inc:hover, #list .inc.sel { background: #2c3a50; }
#list .inc.new { animation: flash 1s 3; }
@keyframes flash { 50% { background: #7a2020; } }
.gun { color: #ff6b6b; font-weight: bold; } .other { color: #9ab; } .test { color: #c9a0ff; }
#map { flex: 1; min-width: 0; background: #0f1520; }
#detail { width: 27em; overflow-y: auto; padding: 0.6em 1em; border-left: 1px solid #333; }
#detail table { font-size: 0.85em; border-collapse: collapse; }
#detail td { padding: 0.1em 0.5em 0.1em 0; vertical-align: top; }
#detail img { width: 100%; background: #fff; }
#detail audio { width: 100%; }
button, select { padding: 0.3em 0.7em; }
.flag { background: #7a2020; padding: 0 0.3em; border-radius: 3px; margin-right: 0.3em; }
#history li { font-size: 0.8em; }
#status { font-size: 0.8em; color: #8a8; }
</style></head><body>
<header><b>shotnet console</b><span id="status">connecting...</span>
  <span class="who">{{user}} ({{role}})
  <form method="post" action="/logout" style="display:inline"><input type="hidden" name="csrf" value="{{csrf}}">
  <button id="signout">Sign out</button></form></span></header>
<main>
<div id="list"></div>
<svg id="map" xmlns="http://www.w3.org/2000/svg"></svg>
<div id="detail"><p>Select an incident.</p></div>
</main>
<script>
const CSRF = "{{csrf}}";
window.HUB = "{{hub}}" || null;
const S = {incidents: {}, events: {}, sensors: null, cameras: null, layers: {}, sel: null};
window.shotnetBeeps = 0;
let audioCtx = null;
function beep() {
  window.shotnetBeeps += 1;
  try {
    audioCtx = audioCtx || new (window.AudioContext || window.webkitAudioContext)();
    const o = audioCtx.createOscillator(), g = audioCtx.createGain();
    o.frequency.value = 880; g.gain.value = 0.15; o.connect(g); g.connect(audioCtx.destination);
    o.start(); o.stop(audioCtx.currentTime + 0.25);
  } catch (e) {}
}
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c])); }
function fmtT(ns) { return new Date(ns / 1e6).toISOString().replace('T', ' ').slice(0, 23) + 'Z'; }

// --- map: local metres around the sensors' centre, north up
let P = null;
function setupProjection() {
  const pts = (S.sensors ? S.sensors.features : []).map(f => f.geometry.coordinates);
  Object.values(S.incidents).forEach(i => pts.push([i.lon, i.lat]));
  if (!pts.length) pts.push([0, 0]);
  const lon0 = pts.reduce((a, p) => a + p[0], 0) / pts.length, lat0 = pts.reduce((a, p) => a + p[1], 0) / pts.length;
  const kx = 111320 * Math.cos(lat0 * Math.PI / 180), ky = 110540;
  const xy = p => [(p[0] - lon0) * kx, -(p[1] - lat0) * ky];
  const all = pts.map(xy);
  const xs = all.map(p => p[0]), ys = all.map(p => p[1]);
  const m = 250, x0 = Math.min(...xs) - m, y0 = Math.min(...ys) - m;
  const w = Math.max(...xs) - x0 + m, h = Math.max(...ys) - y0 + m;
  P = {xy, vb: [x0, y0, Math.max(w, 500), Math.max(h, 500)]};
}
function pathOf(geom) {
  const ring = r => r.map((p, i) => (i ? 'L' : 'M') + P.xy(p).map(v => v.toFixed(1)).join(' ')).join(' ');
  if (geom.type === 'LineString') return ring(geom.coordinates);
  if (geom.type === 'MultiLineString') return geom.coordinates.map(ring).join(' ');
  if (geom.type === 'Polygon') return geom.coordinates.map(r => ring(r) + 'Z').join(' ');
  if (geom.type === 'MultiPolygon') return geom.coordinates.map(pg => pg.map(r => ring(r) + 'Z').join(' ')).join(' ');
  return '';
}
function drawMap() {
  setupProjection();
  const svg = document.getElementById('map');
  svg.setAttribute('viewBox', P.vb.join(' '));
  const u = P.vb[2] / 600;   // ~1 px at a 600 px wide map
  let h = '';
  for (const [name, fc] of Object.entries(S.layers || {})) {
    for (const f of fc.features || []) {
      const poly = f.geometry.type.includes('Polygon');
      h += `<path class="layer-${esc(name)}" d="${pathOf(f.geometry)}" fill="${poly ? '#2b3240' : 'none'}"
             stroke="${poly ? '#3c4656' : '#39424f'}" stroke-width="${poly ? u : 3 * u}"/>`;
    }
  }
  const colour = {ok: '#4caf50', degraded: '#ff9800', silent: '#f44336', unknown: '#78909c'};
  for (const f of (S.sensors ? S.sensors.features : [])) {
    const [x, y] = P.xy(f.geometry.coordinates), st = f.properties.status;
    h += `<circle class="sensor" data-id="${esc(f.properties.id)}" cx="${x}" cy="${y}" r="${6 * u}" fill="${colour[st] || '#78909c'}"
            stroke="#000" stroke-width="${u}"><title>${esc(f.properties.id)}: ${esc(st)} ${esc((f.properties.reasons || []).join('; '))}</title></circle>`;
  }
  for (const f of (S.cameras ? S.cameras.features : [])) {
    const [x, y] = P.xy(f.geometry.coordinates);
    h += `<rect class="camera" x="${x - 4 * u}" y="${y - 4 * u}" width="${8 * u}" height="${8 * u}" fill="#42a5f5">
            <title>camera ${esc(f.properties.id)} (${esc(f.properties.consent)})</title></rect>`;
  }
  for (const inc of Object.values(S.incidents)) {
    const evs = inc.events.map(e => S.events[e]).filter(Boolean);
    const gun = inc.label === 'gunshot' && !inc.test;
    for (const ev of evs) {
      const [x, y] = P.xy([ev.lon, ev.lat]), el = ev.ellipse95_m;
      h += `<ellipse class="ellipse" cx="0" cy="0" rx="${Math.max(el.major, 0.5)}" ry="${Math.max(el.minor, 0.5)}"
              transform="translate(${x} ${y}) rotate(${el.azimuth_deg - 90})" fill="${gun ? '#ff525244' : '#90a4ae33'}"
              stroke="${gun ? '#ff5252' : '#90a4ae'}" stroke-width="${u}"/>`;
    }
    const [x, y] = P.xy([inc.lon, inc.lat]);
    h += `<circle class="incident" data-id="${esc(inc.incident_id)}" cx="${x}" cy="${y}" r="${(S.sel === inc.incident_id ? 12 : 8) * u}"
            fill="${gun ? '#ff1744' : '#b0bec5'}" stroke="#fff" stroke-width="${u}" style="cursor:pointer"
            onclick="select('${esc(inc.incident_id)}')"><title>${esc(inc.label)} x${inc.rounds}</title></circle>`;
  }
  svg.innerHTML = h;
}

// --- incident list
function drawList(flashId) {
  const incs = Object.values(S.incidents).sort((a, b) => b.last_t_ns - a.last_t_ns);
  document.getElementById('list').innerHTML = incs.map(i => {
    const cls = i.test ? 'test' : (i.label === 'gunshot' ? 'gun' : 'other');
    const rv = i.review ? ` <i>(${esc(i.review.action)}: ${esc(i.review.label)})</i>` : '';
    return `<div class="inc ${S.sel === i.incident_id ? 'sel' : ''} ${flashId === i.incident_id ? 'new' : ''}"
                 id="inc-${esc(i.incident_id)}" onclick="select('${esc(i.incident_id)}')">
      <span class="${cls}">${esc(i.test ? 'TEST ' + i.label : i.label.toUpperCase())}</span> x${i.rounds}
      ${i.automatic ? '<span class="flag">AUTO</span>' : ''}${i.multiple_shooters ? '<span class="flag">MULTI</span>' : ''}${rv}
      <br><small>${fmtT(i.first_t_ns)}</small></div>`;
  }).join('');
}

// --- detail
async function select(id) {
  S.sel = id; drawList(); drawMap();
  const r = await fetch('/api/incident/' + encodeURIComponent(id));
  if (!r.ok) { document.getElementById('detail').innerHTML = '<p>Not available.</p>'; return; }
  const d = await r.json(), i = d.incident, ev0 = d.events[0] || {};
  const el = ev0.ellipse95_m || {major: 0, minor: 0, azimuth_deg: 0};
  const sensors = [...new Set(d.events.flatMap(e => e.sensor_ids))];
  const clips = d.clips_with_audio.slice(0, 2).map(k => `
      <div class="clip"><img class="clip-fig" src="/api/clip/${encodeURIComponent(k)}.png" alt="waveform and spectrogram of ${esc(k)}">
      <audio class="clip-audio" controls preload="auto" src="/api/clip/${encodeURIComponent(k)}.wav"></audio>
      <small>${esc(k)}</small></div>`).join('') || '<p>No clip (clips travel only with gunshot-labelled detections).</p>';
  const cues = d.cues.map(c => `<li>${esc(c.type === 'cue' ? 'camera' : 'footage request')} <b>${esc(c.camera_id)}</b>
      ${c.pan_deg != null ? `pan ${c.pan_deg}&deg; tilt ${c.tilt_deg}&deg; zoom ${c.zoom}x` : ''}
      ${c.type === 'cue' && window.HUB ? `<a target="_blank" href="${HUB}/access/${esc(c.grant_id)}?user={{user}}">open stream</a>` : ''}
      ${c.type === 'cue' ? `(grant ${esc(c.grant_id)})` : `(owner: ${esc(c.owner)})`}</li>`).join('') || '<li>none</li>';
  const hist = d.history.map(h => `<li>${fmtT(h.t_ns)} ${esc(h.actor)}: ${esc(h.kind)}
      ${h.data.action ? esc(h.data.action) + ' &rarr; ' + esc(h.data.label) : ''}</li>`).join('');
  const rv = d.review ? `<p id="review-state"><b>${esc(d.review.action)}</b> as <b>${esc(d.review.label)}</b> by ${esc(d.review.by)}</p>` : '<p id="review-state">Not reviewed.</p>';
  document.getElementById('detail').innerHTML = `
    <h3 id="detail-title">${esc(i.label.toUpperCase())} &times;${i.rounds}${i.test ? ' (TEST)' : ''}</h3>
    <table>
      <tr><td>time</td><td id="d-time">${fmtT(i.first_t_ns)}</td></tr>
      <tr><td>position</td><td id="d-pos">${i.lat.toFixed(6)}, ${i.lon.toFixed(6)}</td></tr>
      <tr><td>95% ellipse</td><td id="d-ellipse">${el.major.toFixed(1)} &times; ${el.minor.toFixed(1)} m, azimuth ${el.azimuth_deg.toFixed(0)}&deg;</td></tr>
      <tr><td>rounds</td><td id="d-rounds">${i.rounds}${i.intervals_s.length ? ' (intervals ' + i.intervals_s.map(v => v.toFixed(2)).join(', ') + ' s)' : ''}</td></tr>
      <tr><td>flags</td><td>${i.automatic ? '<span class="flag">automatic fire</span>' : ''}${i.multiple_shooters ? '<span class="flag">' + i.shooters + ' shooters</span>' : ''}${!i.automatic && !i.multiple_shooters ? 'none' : ''}</td></tr>
      <tr><td>confidence</td><td>${(i.max_confidence * 100).toFixed(0)}%</td></tr>
      <tr><td>sensors</td><td id="d-sensors">${sensors.length}: ${esc(sensors.join(', '))}</td></tr>
    </table>
    <h4>Sound</h4>${clips}
    <h4>Cameras</h4><ul id="cues">${cues}</ul>
    <h4>Review</h4>${rv}
    <button id="confirm" onclick="review('confirm')">Confirm</button>
    <button id="dismiss" onclick="review('dismiss')">Dismiss</button>
    <select id="relabel-as">${['firework','backfire','slam','construction','clap','pop','other','gunshot'].map(l => `<option>${l}</option>`).join('')}</select>
    <button id="relabel" onclick="review('relabel', document.getElementById('relabel-as').value)">Relabel</button>
    <h4>History</h4><ul id="history">${hist}</ul>`;
}
async function review(action, label) {
  const r = await fetch('/api/incident/' + encodeURIComponent(S.sel) + '/review', {method: 'POST',
    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': CSRF}, body: JSON.stringify({action, label})});
  if (!r.ok) { alert('review failed: ' + (await r.text())); return; }
  const rv = await r.json();
  if (S.incidents[rv.incident_id]) S.incidents[rv.incident_id].review = rv;
  drawList(); select(S.sel);
}

// --- live feed
async function start() {
  const st = await (await fetch('/api/state')).json();
  S.sensors = st.sensors; S.cameras = st.cameras; S.layers = st.layers || {};
  st.events.forEach(e => S.events[e.event_id] = e);
  st.incidents.forEach(i => S.incidents[i.incident_id] = i);
  drawList(); drawMap();
  const es = new EventSource('/api/stream');
  es.onopen = () => { document.getElementById('status').textContent = 'live'; };
  es.onerror = () => { document.getElementById('status').textContent = 'reconnecting...'; };
  es.addEventListener('expired', () => { location.href = '/login'; });
  es.onmessage = m => {
    const {kind, body} = JSON.parse(m.data);
    if (kind === 'evt') { S.events[body.event_id] = body; drawMap(); if (S.sel && S.incidents[S.sel] && S.incidents[S.sel].events.includes(body.event_id)) select(S.sel); }
    else if (kind === 'inc') {
      const isNew = !S.incidents[body.incident_id];
      const old = S.incidents[body.incident_id];
      S.incidents[body.incident_id] = Object.assign({}, body, {review: old ? old.review : null});
      if (isNew && body.label === 'gunshot' && !body.test) beep();
      drawList(isNew ? body.incident_id : null); drawMap();
      if (S.sel === body.incident_id) select(S.sel);
    } else if (kind === 'hlt' && S.sensors) {
      S.sensors.features.forEach(f => { if (f.properties.id === body.sensor_id) { f.properties.status = body.status; f.properties.reasons = body.reasons; } });
      drawMap();
    } else if (kind === 'cue' && S.sel === body.incident_id) { select(S.sel); }
    else if (kind === 'review' && S.incidents[body.incident_id]) { S.incidents[body.incident_id].review = body; drawList(); }
  };
}
start();
</script></body></html>
"""
