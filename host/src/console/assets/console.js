// The console's only script (host/src/console/mod.rs serves it). Pages work
// without it; it adds two things:
//
// 1. Self-refresh: a <main data-refresh="N"> is fetched again every N
//    seconds and its content swapped in, unless the person is in the middle
//    of something (a ticked box, focus in a field, an open <details>), or
//    the tab is hidden. No server state per viewer: it is a plain GET.
// 2. Bulk selection: "select all" and a live count of ticked jobs.
"use strict";

(function () {
  function busy(main) {
    const active = document.activeElement;
    if (active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) return true;
    if (main.querySelector("input[type=checkbox]:checked")) return true;
    return main.querySelector("details[open]") !== null;
  }

  function refreshEvery(main, seconds) {
    setInterval(async function () {
      if (document.hidden || busy(main)) return;
      try {
        const response = await fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } });
        if (!response.ok || response.redirected) return;
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.querySelector("main");
        if (fresh && !busy(main)) {
          main.innerHTML = fresh.innerHTML;
          main.dataset.refreshedAt = String(Date.now());
          wireSelection(main);
        }
      } catch (error) {
        // The server is restarting or unreachable: try again next time.
      }
    }, seconds * 1000);
  }

  function wireSelection(root) {
    const boxes = Array.from(root.querySelectorAll("input[data-select]"));
    const all = root.querySelector("input[data-select-all]");
    const count = root.querySelector("#selected-count");
    function update() {
      const ticked = boxes.filter(function (box) { return box.checked; }).length;
      if (count) count.textContent = ticked === 0 ? "Tick jobs to act on them." : ticked + (ticked === 1 ? " job" : " jobs") + " selected.";
      if (all) all.checked = ticked > 0 && ticked === boxes.length;
    }
    boxes.forEach(function (box) { box.addEventListener("change", update); });
    if (all) all.addEventListener("change", function () {
      boxes.forEach(function (box) { box.checked = all.checked; });
      update();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const main = document.querySelector("main[data-refresh]");
    if (main) refreshEvery(main, Number(main.dataset.refresh) || 5);
    wireSelection(document);
  });
})();
