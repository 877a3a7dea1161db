// Shared by the member, operator and scheduler views: the live stream, DOM and chart helpers.
// Everything shown goes in through textContent (never innerHTML), so no value can inject markup.
"use strict";

const DS = {
  // Build an element: el("td", {class: "num"}, "42").
  el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  },

  // A section with a title, created once and found again by id on later updates.
  section(id, title, wide) {
    let s = document.getElementById(id);
    if (!s) {
      s = DS.el("section", {id, class: wide ? "wide" : null}, DS.el("h2", null, title),
                DS.el("div", {class: "body"}));
      document.getElementById("main").append(s);
    }
    return s.querySelector(".body");
  },

  // Replace a container's content with a table. columns: [{key, title, num, wrap, render(row)}].
  table(container, id, columns, rows, rowAttrs) {
    const head = DS.el("tr", null, ...columns.map(c => DS.el("th", {class: c.num ? "num" : null}, c.title)));
    const body = rows.map(r => DS.el("tr", rowAttrs ? rowAttrs(r) : null, ...columns.map(c => {
      const v = c.render ? c.render(r) : r[c.key];
      return DS.el("td", {class: c.num ? "num" : c.wrap ? "wrap" : null}, v);
    })));
    const t = DS.el("table", {id}, DS.el("thead", null, head), DS.el("tbody", null, ...body));
    container.replaceChildren(t);
    return t;
  },

  cards(container, items) {
    container.replaceChildren(DS.el("div", {class: "cards"}, ...items.map(([id, k, v]) =>
      DS.el("div", {class: "card", id}, DS.el("div", {class: "v"}, v), DS.el("div", {class: "k"}, k)))));
  },

  bytes(n) {
    if (n === undefined || n === null) return "";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  },

  num(n, digits) {
    if (n === undefined || n === null) return "–";
    return Number(n).toLocaleString("en-US", {maximumFractionDigits: digits === undefined ? 1 : digits});
  },

  bar(fraction, label) {
    const f = Math.max(0, Math.min(1, fraction || 0));
    return DS.el("div", {class: "barcell"},
                 DS.el("div", {class: "bar" + (f > 0.9 ? " hot" : ""), "data-fraction": f.toFixed(3)},
                       DS.el("span")),
                 DS.el("em", null, label));
  },

  // Widths are set through CSSOM (allowed by the page's Content-Security-Policy).
  sizeBars(root) {
    for (const b of root.querySelectorAll(".bar")) {
      b.querySelector("span").style.width = (Number(b.dataset.fraction) * 100).toFixed(1) + "%";
    }
  },

  time(epoch) {
    return epoch ? new Date(epoch * 1000).toLocaleTimeString("en-GB") : "";
  },

  // A uPlot line chart kept across updates: update(t[], {name: values[]}).
  charts: {},
  chart(container, id, title, names, unit) {
    let c = DS.charts[id];
    if (!container.classList.contains("charts")) container.classList.add("charts");
    const per = container.clientWidth > 1100 ? 3 : container.clientWidth > 700 ? 2 : 1;
    const width = Math.max(280, Math.floor(container.clientWidth / per) - 16);
    if (!c) {
      const colors = ["#2e5aac", "#12805c", "#b54708", "#7a2eac", "#667085", "#c4320a"];
      const div = DS.el("div", {class: "chart", id});
      container.append(div);
      const opts = {
        title, width, height: 200,
        scales: {x: {time: true}},
        axes: [{}, {label: unit, size: 60}],
        series: [{}, ...names.map((n, i) => ({label: n, stroke: colors[i % colors.length], width: 1.5,
                                                points: {show: false}}))],
      };
      c = DS.charts[id] = {plot: new uPlot(opts, [[], ...names.map(() => [])], div), names, width};
    } else if (Math.abs(c.width - width) > 20) {
      c.plot.setSize({width, height: 200});
      c.width = width;
    }
    return {update(t, series) { c.plot.setData([t, ...c.names.map(n => series[n] || [])]); }};
  },

  // Follow the server's stream; render(view) on each update. EventSource reconnects by itself.
  connect(render) {
    const conn = document.getElementById("conn");
    const state = (s, text) => { conn.dataset.state = s; conn.textContent = text; };
    const es = new EventSource("/dashboard/api/events");
    es.onopen = () => state("live", "live");
    es.onerror = () => state("reconnecting", "reconnecting…");
    es.addEventListener("failure", e => state("failure", "view failed: " + JSON.parse(e.data)));
    es.onmessage = e => {
      const view = JSON.parse(e.data);
      state("live", "live · " + DS.time(view.time));
      render(view);
      DS.sizeBars(document);
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    };
    return es;
  },
};
