// Plain-SVG plots for the console: spectra over the target, losses per round, bounds history.
// No library: a few scales, ticks and paths are all these need.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const M = { l: 52, r: 14, t: 12, b: 36 };
  // A phone shows a 600-unit-wide plot at about half size, and its 12 px text at 6 px: there the plots
  // are drawn 380 units wide, so the text stays readable; they are drawn again when the screen turns.
  const NARROW = window.matchMedia ? window.matchMedia("(max-width: 560px)") : null;
  let W = 600, H = 320;
  const shown = new Map();  // svg -> [draw, data]: what to draw again at a change of width

  function fit(svg, draw, data) {
    const narrow = NARROW !== null && NARROW.matches;
    W = narrow ? 380 : 600;
    H = narrow ? 300 : 320;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    shown.set(svg, [draw, data]);
  }
  if (NARROW) NARROW.addEventListener("change", () => { for (const [svg, [draw, data]] of shown) draw(svg, data); });
  const COLOURS = ["#2563eb", "#db2777", "#0891b2", "#ca8a04", "#7c3aed", "#16a34a", "#ea580c", "#475569"];

  function el(tag, attrs, parent) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function clear(svg) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
  }

  function scale(d0, d1, r0, r1) {
    const span = d1 - d0 || 1;
    return (v) => r0 + ((v - d0) / span) * (r1 - r0);
  }

  // about n round-numbered ticks between lo and hi
  function ticks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function axes(svg, x, y, xd, yd, xlabel, ylabel, xInts) {
    const [x0, x1] = xd, [y0, y1] = yd;
    el("line", { x1: M.l, y1: H - M.b, x2: W - M.r, y2: H - M.b, class: "axis" }, svg);
    el("line", { x1: M.l, y1: M.t, x2: M.l, y2: H - M.b, class: "axis" }, svg);
    const xt = xInts ? ticks(x0, x1, Math.min(8, x1 - x0)).filter(Number.isInteger) : ticks(x0, x1, 6);
    for (const t of xt) {
      el("line", { x1: x(t), x2: x(t), y1: H - M.b, y2: H - M.b + 4, class: "axis" }, svg);
      el("text", { x: x(t), y: H - M.b + 17, "text-anchor": "middle" }, svg).textContent = t;
    }
    for (const t of ticks(y0, y1, 4)) {
      el("line", { x1: M.l - 4, x2: W - M.r, y1: y(t), y2: y(t), class: "axis", opacity: 0.5 }, svg);
      el("text", { x: M.l - 7, y: y(t) + 4, "text-anchor": "end" }, svg).textContent = +t.toPrecision(3);
    }
    el("text", { x: (M.l + W - M.r) / 2, y: H - 4, "text-anchor": "middle" }, svg).textContent = xlabel;
    const yl = el("text", { x: 12, y: (M.t + H - M.b) / 2, "text-anchor": "middle" }, svg);
    yl.setAttribute("transform", `rotate(-90 12 ${(M.t + H - M.b) / 2})`);
    yl.textContent = ylabel;
  }

  function path(xs, ys, x, y) {
    let d = "", pen = false;
    for (let i = 0; i < xs.length; i++) {
      const v = ys[i];
      if (v === null || v === undefined || Number.isNaN(v)) { pen = false; continue; }
      d += (pen ? "L" : "M") + x(xs[i]).toFixed(1) + "," + y(v).toFixed(1);
      pen = true;
    }
    return d;
  }

  function empty(svg, text) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, svg).textContent = text;
  }

  // data: {wavelengths_nm, target, droplets: [{absorbance, loss, accepted, round, condition, replicate}]}
  // The target is drawn scaled to the droplets' mean peak: the loss compares shapes (min-max scaled),
  // so the eye should too; the axis stays the droplets' absorbance.
  function spectra(svg, data) {
    clear(svg);
    fit(svg, spectra, data);
    const wl = data.wavelengths_nm || [], drops = data.droplets || [];
    if (!wl.length) return empty(svg, "no spectra yet");
    let peak = 0, lo = 0;
    for (const d of drops) for (const v of d.absorbance) if (v !== null) { peak = Math.max(peak, v); lo = Math.min(lo, v); }
    const meanPeak = drops.length ? drops.reduce((s, d) => s + Math.max(...d.absorbance.filter((v) => v !== null)), 0) / drops.length : 1;
    const tmax = Math.max(...data.target), tmin = Math.min(...data.target);
    const target = data.target.map((v) => ((v - tmin) / (tmax - tmin || 1)) * (meanPeak || 1));
    const hi = Math.max(peak, meanPeak || 1) * 1.05;
    const x = scale(wl[0], wl[wl.length - 1], M.l, W - M.r), y = scale(lo, hi, H - M.b, M.t);
    axes(svg, x, y, [wl[0], wl[wl.length - 1]], [lo, hi], "wavelength (nm)", "absorbance");
    drops.forEach((d, i) => {
      const p = el("path", { d: path(wl, d.absorbance, x, y), class: "droplet" + (d.accepted === false ? " rejected" : "") }, svg);
      p.setAttribute("stroke", COLOURS[i % COLOURS.length]);
      el("title", {}, p).textContent =
        `round ${d.round} condition ${d.condition} replicate ${d.replicate}: loss ${d.loss === null ? "-" : d.loss.toFixed(3)}`;
    });
    el("path", { d: path(wl, target, x, y), class: "target" }, svg);
    el("text", { x: W - M.r - 4, y: M.t + 14, "text-anchor": "end" }, svg).textContent = "- - target";
  }

  // data: {rounds: [{index, conditions: [{index, median_loss}]}], best_so_far: [{round, loss}]}
  function losses(svg, data) {
    clear(svg);
    fit(svg, losses, data);
    const rounds = data.rounds || [];
    const pts = [];
    for (const r of rounds) for (const c of r.conditions) if (c.median_loss !== null) pts.push([r.index, c.median_loss, c]);
    const anyFailed = rounds.some((r) => r.conditions.some((c) => c.status === "failed"));
    if (!pts.length && !anyFailed) return empty(svg, "no losses yet");
    const rmin = Math.min(...rounds.map((r) => r.index)), rmax = Math.max(...rounds.map((r) => r.index));
    const lmax = pts.length ? Math.max(...pts.map((p) => p[1])) : 1, lmin = Math.min(0, ...pts.map((p) => p[1]));
    const x = scale(rmin - 0.5, rmax + 0.5, M.l, W - M.r), y = scale(lmin, Math.max(lmax * 1.05, 0.1), H - M.b, M.t);
    axes(svg, x, y, [rmin - 0.5, rmax + 0.5], [lmin, Math.max(lmax * 1.05, 0.1)], "round", "loss", true);
    const n = {};
    for (const [r, l, c] of pts) {
      n[r] = (n[r] || 0) + 1;
      const jitter = ((n[r] * 7919) % 13) / 13 - 0.5; // spread a round's points so they do not hide each other
      const dot = el("circle", { cx: x(r + jitter * 0.5), cy: y(l), r: 4.5, class: "pt" }, svg);
      el("title", {}, dot).textContent = `round ${r} condition ${c.index}: median loss ${l.toFixed(3)}`;
    }
    // failed conditions (no median: every droplet rejected, or refused): red crosses along the top
    const top = y(Math.max(lmax * 1.05, 0.1));
    for (const r of rounds) {
      r.conditions.filter((c) => c.status === "failed").forEach((c, k) => {
        const cx = x(r.index + (((k * 7919) % 13) / 13 - 0.5) * 0.5), cy = top + 6;
        const cross = el("path", { d: `M${cx - 4},${cy - 4}L${cx + 4},${cy + 4}M${cx - 4},${cy + 4}L${cx + 4},${cy - 4}`, class: "failed" }, svg);
        el("title", {}, cross).textContent = `round ${r.index} condition ${c.index}: failed (no median loss)`;
      });
    }
    const best = data.best_so_far || [];
    if (best.length) {
      let d = "";
      best.forEach((b, i) => {
        const bx0 = x(b.round - 0.5), bx1 = x(b.round + 0.5), by = y(b.loss);
        d += (i ? "L" : "M") + bx0.toFixed(1) + "," + by.toFixed(1) + "L" + bx1.toFixed(1) + "," + by.toFixed(1);
      });
      el("path", { d, class: "best" }, svg);
      const last = best[best.length - 1];
      el("text", { x: W - M.r - 4, y: M.t + 14, "text-anchor": "end" }, svg).textContent =
        `best so far ${last.loss.toFixed(3)}`;
    }
  }

  // data: {variables: [{name, hard_limits, unit}], history: [{round, bounds: {name: [lo, hi]}, widened: [names]}]}
  function bounds(table, data) {
    table.replaceChildren();
    const vars = data.variables || [], hist = data.history || [];
    const head = table.createTHead().insertRow();
    for (const h of ["input", "current", "history"]) {
      const th = document.createElement("th");
      th.textContent = h;
      head.appendChild(th);
    }
    const body = table.createTBody();
    const current = hist.length ? hist[hist.length - 1] : null;
    for (const v of vars) {
      const row = body.insertRow();
      row.insertCell().textContent = v.name;
      const cur = current && current.bounds[v.name];
      const curCell = row.insertCell();
      curCell.textContent = cur ? `${fmt(cur[0])} – ${fmt(cur[1])}${v.unit ? " " + v.unit : ""}` : "-";
      const widenings = hist.filter((h) => (h.widened || []).includes(v.name)).length;
      if (widenings) {
        const tag = document.createElement("span");
        tag.className = "widened-tag";
        tag.textContent = ` widened ${widenings}×`;
        curCell.appendChild(tag);
      }
      const svg = el("svg", { viewBox: `0 0 200 ${Math.max(1, hist.length) * 7 + 2}`, "aria-label": `${v.name} bounds per round` });
      const [h0, h1] = v.hard_limits || boundsExtent(hist, v.name);
      const x = scale(h0, h1, 2, 198);
      hist.forEach((h, i) => {
        const b = h.bounds[v.name];
        if (!b) return;
        el("rect", { x: 2, y: i * 7 + 1, width: 196, height: 5, class: "limits" }, svg);
        const r = el("rect", {
          x: x(b[0]), y: i * 7 + 1, width: Math.max(1, x(b[1]) - x(b[0])), height: 5,
          class: "range" + ((h.widened || []).includes(v.name) ? " widened" : ""),
        }, svg);
        el("title", {}, r).textContent = `round ${h.round}: ${fmt(b[0])} – ${fmt(b[1])}`;
      });
      row.insertCell().appendChild(svg);
      row.cells[2].className = "hist";
    }
  }

  function boundsExtent(hist, name) {
    const all = hist.flatMap((h) => h.bounds[name] || []);
    return all.length ? [Math.min(...all), Math.max(...all)] : [0, 1];
  }

  function fmt(v) {
    return Math.abs(v) >= 100 ? v.toFixed(0) : +v.toPrecision(3);
  }

  window.Plots = { spectra, losses, bounds };
})();
