// Continuator's continuation viewer: piano rolls on canvas and a small Web Audio piano.
// Everything it needs is in the page's JSON block; nothing is fetched.
"use strict";

(function () {
  const dataEl = document.getElementById("piece-data");
  if (!dataEl) return;
  const piece = JSON.parse(dataEl.textContent);
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue("--" + name).trim();
  const tpq = piece.tpq;
  const secondsPerTick = 60 / piece.bpm / tpq;
  const start = piece.start;
  const end = start + piece.bar_len * piece.bars;

  // Notes as {start, duration, pitch, velocity} in ticks on the prime's timeline.
  const asNotes = (rows, offset) =>
    rows.map(([s, d, p, v]) => ({ start: s + offset, duration: d, pitch: p, velocity: v }));
  const prime = asNotes(piece.prime, 0);
  const truth = asNotes(piece.truth, start);
  const systems = {};
  for (const [name, sys] of Object.entries(piece.systems)) systems[name] = asNotes(sys.notes, start);

  const all = prime.concat(truth, ...Object.values(systems));
  const low = Math.min(...all.map((n) => n.pitch)) - 2;
  const high = Math.max(...all.map((n) => n.pitch)) + 2;

  // Draws layers of notes between ticks t0 and t1, with bar lines and the transition marker.
  function drawRoll(canvas, layers, t0, t1) {
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    const x = (t) => ((t - t0) / (t1 - t0)) * w;
    const rowH = h / (high - low + 1);
    const y = (p) => (high - p) * rowH;
    ctx.fillStyle = "#0e1013";
    ctx.fillRect(0, 0, w, h);
    // Black-key rows and C lines, for reading pitch.
    for (let p = low; p <= high; p++) {
      if ([1, 3, 6, 8, 10].includes(p % 12)) {
        ctx.fillStyle = "#12151a";
        ctx.fillRect(0, y(p), w, rowH);
      }
      if (p % 12 === 0) {
        ctx.fillStyle = color("grid");
        ctx.fillRect(0, y(p) + rowH - 1, w, 1);
      }
    }
    ctx.fillStyle = color("grid");
    for (let t = Math.ceil(t0 / piece.bar_len) * piece.bar_len; t <= t1; t += piece.bar_len) {
      ctx.fillRect(Math.round(x(t)), 0, 1, h);
    }
    for (const [notes, fill] of layers) {
      ctx.fillStyle = fill;
      for (const n of notes) {
        if (n.start + n.duration < t0 || n.start > t1) continue;
        const nx = x(n.start), nw = Math.max(2, x(n.start + n.duration) - nx - 1);
        ctx.globalAlpha = 0.55 + 0.45 * (n.velocity / 127);
        ctx.fillRect(nx, y(n.pitch) + 0.5, nw, Math.max(2, rowH - 1));
      }
    }
    ctx.globalAlpha = 1;
    if (start >= t0 && start <= t1) {
      const mx = Math.round(x(start));
      ctx.fillStyle = color("marker");
      ctx.fillRect(mx - 1, 0, 3, h);
      canvas.dataset.transitionX = String(mx);
    }
    canvas.dataset.rendered = String(layers.reduce((k, [notes]) => k + notes.length, 0));
    return { x, t0, t1 };
  }

  const main = document.getElementById("roll-main");
  let mainView = drawRoll(main, [[prime, color("prime")], [systems.model || [], color("model")]], 0, end);
  const mainImage = main.getContext("2d").getImageData(0, 0, main.width, main.height);
  const small = { model: "model", truth: "truth", markov: "markov", repeat: "repeat" };
  for (const [name, varName] of Object.entries(small)) {
    const canvas = document.getElementById("roll-" + name);
    const notes = name === "truth" ? truth : systems[name];
    if (!canvas || !notes) continue;
    // The last prime bar for context, then the continuation.
    drawRoll(canvas, [[prime, color("prime")], [notes, color(varName)]], Math.max(0, start - piece.bar_len), end);
  }

  // Header line and measures table.
  document.getElementById("meta").textContent =
    `${piece.file} · from bar ${piece.first_bar} · ${piece.meter} at ${Math.round(piece.bpm)} BPM · ` +
    `${piece.prime_bars} bars of prime, ${piece.bars} bars continued`;
  const fmt = (v, key) =>
    v === null || v === undefined ? "–"
      : typeof v === "boolean" ? (v ? "yes" : "no")
        : key === "notes" ? String(v) : v.toFixed(3);
  const cols = [["notes", "notes"], ["pitch_class_overlap", "pc overlap"], ["density_ratio", "density"],
    ["groove_similarity", "groove"], ["pitch_range_overlap", "range"], ["key_consistency", "key"],
    ["distinct_4gram_ratio", "distinct 4-grams"], ["copied_bar_share", "copied bars"], ["grammar_valid", "grammar"], ["valid", "valid (grammar, no silent bar)"]];
  const table = document.getElementById("measures");
  let html = "<thead><tr><th>system</th>" + cols.map(([, h]) => `<th>${h}</th>`).join("") + "</tr></thead><tbody>";
  const rows = [["truth", piece.truth_measures]].concat(Object.entries(piece.systems).map(([n, s]) => [n, s.measures]));
  for (const [name, m] of rows) html += `<tr><td>${name}</td>` + cols.map(([k]) => `<td>${fmt(m[k], k)}</td>`).join("") + "</tr>";
  table.innerHTML = html + "</tbody>";
  if (piece.truth_nll !== null) {
    table.insertAdjacentHTML("afterend", `<p class="meta">NLL of the true continuation under the model: ${piece.truth_nll.toFixed(3)} nats/token</p>`);
  }
  const ul = document.getElementById("downloads");
  for (const m of piece.midi) ul.insertAdjacentHTML("beforeend", `<li><a href="${m.href}" download>${m.label}</a></li>`);

  // A small piano-like synth: two detuned partials through a low-pass, fast attack, decay.
  let audio = null, voices = [], timer = null, raf = null;
  function synth() {
    if (!audio) {
      audio = new (window.AudioContext || window.webkitAudioContext)();
      const comp = audio.createDynamicsCompressor();
      comp.connect(audio.destination);
      audio.master = audio.createGain();
      audio.master.gain.value = 0.35;
      audio.master.connect(comp);
    }
    return audio;
  }
  function playNote(ctx, n, when) {
    const f = 440 * Math.pow(2, (n.pitch - 69) / 12);
    const dur = Math.max(0.08, n.duration * secondsPerTick);
    const amp = 0.08 + 0.25 * (n.velocity / 127);
    const env = ctx.createGain();
    const lp = ctx.createBiquadFilter();
    lp.type = "lowpass";
    lp.frequency.value = Math.min(12000, f * 6);
    env.gain.setValueAtTime(0, when);
    env.gain.linearRampToValueAtTime(amp, when + 0.005);
    env.gain.exponentialRampToValueAtTime(amp * 0.35, when + Math.min(dur, 0.4));
    env.gain.setTargetAtTime(0.0001, when + dur, 0.08);
    lp.connect(env);
    env.connect(ctx.master);
    for (const [type, mult, gain] of [["triangle", 1, 1], ["sine", 2.001, 0.3]]) {
      const osc = ctx.createOscillator();
      const g = ctx.createGain();
      osc.type = type;
      osc.frequency.value = f * mult;
      g.gain.value = gain;
      osc.connect(g);
      g.connect(lp);
      osc.start(when);
      osc.stop(when + dur + 0.6);
      voices.push(osc);
    }
  }
  const buttons = [...document.querySelectorAll(".player button[data-what]")];
  const stopButton = document.getElementById("stop");
  const status = document.getElementById("status");
  function setState(what) {
    document.body.dataset.playing = what;
    status.textContent = what ? `playing ${what}` : "stopped";
    buttons.forEach((b) => b.classList.toggle("active", b.dataset.what === what));
    stopButton.disabled = !what;
  }
  function stop() {
    voices.forEach((o) => { try { o.stop(); } catch (_) { /* already stopped */ } });
    voices = [];
    clearTimeout(timer);
    cancelAnimationFrame(raf);
    main.getContext("2d").putImageData(mainImage, 0, 0);
    setState("");
  }
  function play(what) {
    stop();
    const ctx = synth();
    ctx.resume();
    // original: prime + truth; continuation: the model's alone; both: prime + model.
    const model = systems.model || [];
    const notes = what === "original" ? prime.concat(truth) : what === "continuation" ? model : prime.concat(model);
    const from = what === "continuation" ? start : 0;
    const t0 = ctx.currentTime + 0.08;
    for (const n of notes) playNote(ctx, n, t0 + (n.start - from) * secondsPerTick);
    const seconds = (end - from) * secondsPerTick;
    setState(what);
    const c = main.getContext("2d");
    const wall = performance.now();
    const tick = () => {
      const t = from + ((performance.now() - wall) / 1000) / secondsPerTick;
      c.putImageData(mainImage, 0, 0);
      c.fillStyle = "#ffffff";
      c.fillRect(Math.round(mainView.x(Math.min(t, end))), 0, 2, main.height);
      main.dataset.playhead = String(Math.round(t));
      raf = requestAnimationFrame(tick);
    };
    tick();
    timer = setTimeout(stop, seconds * 1000 + 800);
  }
  buttons.forEach((b) => b.addEventListener("click", () => play(b.dataset.what)));
  stopButton.addEventListener("click", stop);
  setState("");
})();
