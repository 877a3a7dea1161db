// The member view: members, the leader's replication progress, rates, watchers, leases, charts.
"use strict";

function renderMember(v) {
  document.getElementById("title").textContent = "member " + v.self.name;
  document.getElementById("subtitle").textContent =
    "id " + v.self.id + " · cluster " + v.cluster_id + " · leader " + (v.leader_name || v.leader || "none");

  const members = DS.section("sec-members", "Members", true);
  DS.table(members, "members", [
    {title: "name", render: m => DS.el("span", null, m.name || "(not started)", m.self ? " (this page)" : "")},
    {title: "id", key: "id"},
    {title: "role", render: m => m.learner ? "learner" : "voter"},
    {title: "leader", render: m => m.leader ? DS.el("span", {class: "badge leader"}, "leader") : ""},
    {title: "term", num: true, render: m => DS.num(m.term, 0)},
    {title: "committed", num: true, render: m => DS.num(m.commit, 0)},
    {title: "applied", num: true, render: m => DS.num(m.applied, 0)},
    {title: "db size", num: true, render: m => m.reachable ? DS.bytes(m.db_size) + " (" + DS.bytes(m.db_in_use) + " in use)" : ""},
    {title: "health", render: m => DS.el("span", {class: m.health === "healthy" ? "ok" : "bad"}, m.health)},
    {title: "alarms", render: m => m.alarms.join(", ") || "none"},
  ], v.members, m => ({"data-name": m.name, "data-id": m.id, "data-leader": m.leader ? "true" : "false",
                       "data-health": m.health, class: m.leader ? "leader" : null}));

  const prog = DS.section("sec-progress", "Replication (the leader's view)");
  if (v.progress) {
    DS.table(prog, "progress", [
      {title: "member", render: p => p.name + (p.self ? " (leader)" : "")},
      {title: "state", key: "state"},
      {title: "match", num: true, render: p => DS.num(p.match, 0)},
      {title: "next", num: true, render: p => DS.num(p.next, 0)},
      {title: "behind", num: true, render: p => DS.num(p.lag, 0)},
      {title: "in flight", num: true, key: "inflight"},
      {title: "active", render: p => p.active ? "yes" : DS.el("span", {class: "bad"}, "no")},
    ], v.progress, p => ({"data-name": p.name, "data-match": p.match, "data-state": p.state}));
  } else {
    prog.replaceChildren(DS.el("p", {class: "note", id: "progress-note"},
      "This member is not the leader: match and next indexes are on the leader's console" +
      (v.leader_name ? " (" + v.leader_name + ")" : "") + ". Committed and applied indexes are above."));
  }

  const rates = DS.section("sec-rates", "Now");
  const total = Object.values(v.rates.requests).reduce((a, b) => a + b, 0);
  DS.cards(rates, [
    ["rate-requests", "requests/s", DS.num(total)],
    ["rate-events", "watch events/s", DS.num(v.rates.events)],
    ["rate-applied", "applied entries/s", DS.num(v.rates.applied)],
    ["rate-fsync", "WAL fsync p99 (10 s)", v.rates.fsync_p99_ms === null ? "–" : DS.num(v.rates.fsync_p99_ms, 2) + " ms"],
  ]);
  const methods = Object.entries(v.rates.requests);
  const mt = DS.el("div", {class: "methods"});
  rates.append(mt);
  if (methods.length) {
    DS.table(mt, "methods", [{title: "method", render: r => r[0]}, {title: "requests/s", num: true, render: r => DS.num(r[1])}], methods);
  } else {
    mt.append(DS.el("p", {class: "note"}, "No requests in the last second."));
  }

  const w = DS.section("sec-watchers", "Watchers and leases");
  DS.cards(w, [["watchers", "watchers", DS.num(v.watchers.total, 0)],
               ["watchers-unsynced", "catching up", DS.num(v.watchers.unsynced, 0)],
               ["leases", "leases", DS.num(v.leases.count, 0)],
               ["lease-keys", "keys with a lease", DS.num(v.leases.attached_keys, 0)]]);
  const wt = DS.el("div");
  w.append(wt);
  if (v.watchers.by_prefix.length) {
    DS.table(wt, "watch-prefixes", [{title: "key prefix", render: r => r[0]}, {title: "watchers", num: true, render: r => DS.num(r[1], 0)}],
             v.watchers.by_prefix);
  }

  const h = v.history;
  const charts = DS.section("sec-charts", "Last minutes (this member)", true);
  DS.chart(charts, "chart-requests", "requests/s by method", Object.keys(h.requests), "req/s").update(h.t, h.requests);
  DS.chart(charts, "chart-events", "watch events/s and applied entries/s", ["events", "applied"], "per s")
    .update(h.t, {events: h.events, applied: h.applied});
  DS.chart(charts, "chart-fsync", "WAL fsync p99 (ms)", ["fsync p99"], "ms").update(h.t, {"fsync p99": h.fsync_p99_ms});
}

DS.connect(renderMember);
