// The operator view: per cluster, spec against status, the planner's decisions and the events.
"use strict";

function renderOperator(v) {
  document.getElementById("title").textContent = "operator";
  document.getElementById("subtitle").textContent =
    v.clusters.length + (v.clusters.length === 1 ? " cluster" : " clusters");
  if (!v.clusters.length) {
    DS.section("sec-none", "Clusters", true).replaceChildren(
      DS.el("p", {class: "note"}, "No DatastoreCluster reconciled yet."));
  }
  v.clusters.forEach((c, i) => {
    const id = "c" + i + "-";
    const spec = c.spec || {}, st = c.status;
    const head = DS.section(id + "spec", "Cluster " + c.name + ": spec and status", true);
    DS.cards(head, [
      [id + "desired", "spec.size (desired members)", DS.num(spec.size, 0)],
      [id + "voters", "voting members now", DS.num(st.size, 0)],
      [id + "ready", "ready members", DS.num(st.readyMembers, 0)],
      [id + "generation", "generation / observed", (spec.generation ?? "–") + " / " + (st.observedGeneration ?? "–")],
      [id + "progressing", "progressing", c.progressing ? "yes" : "no"],
    ]);
    head.querySelector("#" + id + "progressing").dataset.status = c.progressing ? "True" : "False";
    const cond = DS.el("div");
    head.append(cond);
    DS.table(cond, id + "conditions", [
      {title: "condition", key: "type"},
      {title: "status", render: k => DS.el("span", {class: (k.type === "Degraded") === (k.status === "True") ? "bad" : "ok"}, k.status)},
      {title: "reason", key: "reason"},
      {title: "message", key: "message", wrap: true},
      {title: "since", key: "lastTransitionTime"},
    ], st.conditions, k => ({"data-type": k.type, "data-status": k.status, "data-reason": k.reason}));

    const members = DS.section(id + "members", "Members (status)");
    DS.table(members, id + "member-table", [
      {title: "name", key: "name"},
      {title: "id", key: "id"},
      {title: "role", render: m => m.isLearner ? "learner" : "voter"},
      {title: "leader", render: m => m.isLeader ? DS.el("span", {class: "badge leader"}, "leader") : ""},
      {title: "health", render: m => DS.el("span", {class: m.healthy ? "ok" : "bad"}, m.healthy ? "healthy" : "not healthy")},
    ], st.members, m => ({"data-name": m.name, class: m.isLeader ? "leader" : null}));
    DS.table(DS.section(id + "workloads-sec", "Processes"), id + "workloads", [
      {title: "slot", key: "name"},
      {title: "phase", key: "phase"},
      {title: "restarts", num: true, key: "restarts"},
      {title: "data", render: w => w.has_data ? "yes" : "no"},
    ], c.workloads);

    const actions = DS.section(id + "actions", "The planner's last decisions", true);
    DS.table(actions, id + "action-table", [
      {title: "time", render: a => DS.time(a.time)},
      {title: "action", render: a => DS.el("span", {class: "badge"}, a.kind)},
      {title: "outcome", key: "outcome"},
      {title: "reason", wrap: true, render: a => a.reason + (a.message ? " (" + a.message + ")" : "")},
    ], c.actions, a => ({"data-kind": a.kind, "data-outcome": a.outcome}));

    const events = DS.section(id + "events", "Events", true);
    if (c.events.length) {
      DS.table(events, id + "event-table", [
        {title: "time", render: e => DS.time(e.time)},
        {title: "action", key: "kind"},
        {title: "outcome", render: e => DS.el("span", {class: e.outcome === "failed" || e.outcome === "degraded" ? "bad" : null}, e.outcome)},
        {title: "message", key: "message", wrap: true},
      ], c.events, e => ({"data-kind": e.kind}));
    } else {
      events.replaceChildren(DS.el("p", {class: "note"}, "No events yet."));
    }
  });
}

DS.connect(renderOperator);
