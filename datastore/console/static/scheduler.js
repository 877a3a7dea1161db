// The scheduler view: pending and bound pods, and each node's allocation as bars.
"use strict";

function renderScheduler(v) {
  document.getElementById("title").textContent = "scheduler " + v.identity;
  document.getElementById("subtitle").textContent = "schedulerName " + v.scheduler_name + " · " +
    (v.leader ? "leader: this replica schedules" : "standby: another replica leads");

  const sum = DS.section("sec-pods", "Pods", true);
  DS.cards(sum, [
    ["pods-pending", "pending", DS.num(v.pods.pending, 0)],
    ["pods-binding", "binding", DS.num(v.pods.binding, 0)],
    ["pods-bound", "bound", DS.num(v.pods.bound, 0)],
    ["pods-total", "pods seen", DS.num(v.pods.total, 0)],
    ["queue-unschedulable", "unschedulable (parked)", DS.num(v.queue.unschedulable, 0)],
    ["binds-conflicts", "bind conflicts", DS.num(v.binds.conflicts, 0)],
  ]);
  sum.querySelector("#pods-bound").dataset.value = v.pods.bound;

  const nodes = DS.section("sec-nodes", "Allocation per node (requests / allocatable)", true);
  DS.table(nodes, "nodes", [
    {title: "node", render: n => DS.el("span", null, n.name, n.cordoned ? " (cordoned)" : "",
                                        n.ready ? "" : " (not ready)", n.tainted ? " (tainted)" : "")},
    {title: "CPU", render: n => DS.bar(n.cpu[1] ? n.cpu[0] / n.cpu[1] : 0,
                                        DS.num(n.cpu[0] / 1000, 2) + " / " + DS.num(n.cpu[1] / 1000, 2) + " cores")},
    {title: "memory", render: n => DS.bar(n.memory[1] ? n.memory[0] / n.memory[1] : 0,
                                           DS.bytes(n.memory[0]) + " / " + DS.bytes(n.memory[1]))},
    {title: "pods", render: n => DS.bar(n.pods[1] ? n.pods[0] / n.pods[1] : 0, n.pods[0] + " / " + n.pods[1])},
  ], v.nodes, n => ({"data-name": n.name, "data-pods": n.pods[0]}));

  const pend = DS.section("sec-pending", "Pending pods");
  if (v.pending.length) {
    DS.table(pend, "pending", [{title: "pod", key: "name"}, {title: "queue", key: "queue"}], v.pending,
             p => ({"data-name": p.name}));
    if (v.pods.pending > v.pending.length) {
      pend.append(DS.el("p", {class: "note"}, "and " + (v.pods.pending - v.pending.length) + " more"));
    }
  } else {
    pend.replaceChildren(DS.el("p", {class: "note"}, "No pending pods."));
  }

  const att = DS.section("sec-attempts", "Scheduling attempts");
  DS.table(att, "attempts", [{title: "result", render: r => r[0]}, {title: "count", num: true, render: r => DS.num(r[1], 0)}],
           [...Object.entries(v.attempts), ["binds done", v.binds.done], ["bind errors", v.binds.errors],
            ["fenced binds", v.binds.fenced]]);
}

DS.connect(renderScheduler);
