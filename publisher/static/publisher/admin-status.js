// The publisher's status banner: refreshed from status.json every few seconds, without reloading the page; the
// build list and the build page's log follow while a build is open. Paused while the tab is hidden.
(function () {
  "use strict";
  var EVERY = 4000;
  var banner = document.getElementById("publisher-status");
  if (!banner) {
    return;
  }
  var timer = null;
  var lastKey = null;
  var lastHtml = null;

  function key(status) {
    var a = status.active, q = status.queued;
    return JSON.stringify([a && [a.id, a.state, a.pages_done], q && [q.id, q.requests], status.live && status.live.release]);
  }

  function refreshList() {
    // The build list: swap its table for a fresh one, unless rows are selected for an action.
    var table = document.getElementById("result_list");
    if (!table || !document.body.classList.contains("model-build") || !document.body.classList.contains("change-list")) {
      return;
    }
    if (table.querySelector("input.action-select:checked")) {
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("result_list");
        var current = document.getElementById("result_list");
        if (fresh && current && !current.querySelector("input.action-select:checked")) {
          current.replaceWith(fresh);
        }
      })
      .catch(function () {});
  }

  function refreshLog() {
    var log = document.getElementById("publisher-log-tail");
    if (!log || !log.dataset.url || log.dataset.open !== "1") {
      return;
    }
    fetch(log.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (!body) { return; }
        var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.textContent = body.text;
        if (atEnd) { log.scrollTop = log.scrollHeight; }
        if (!body.open) {
          log.dataset.open = "0";
          if (log.dataset.state !== body.state) { window.location.reload(); }
        }
      })
      .catch(function () {});
  }

  function poll() {
    fetch(banner.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (status) {
        if (!status) { return; }
        if (status.banner_html !== lastHtml) {  // unchanged: leave it, so screen readers are not told again
          banner.innerHTML = status.banner_html;
          lastHtml = status.banner_html;
        }
        var k = key(status);
        if ((status.open || lastKey !== null) && k !== lastKey) { refreshList(); }
        lastKey = k;
      })
      .catch(function () {})
      .then(refreshLog)
      .then(schedule);
  }

  function schedule() {
    clearTimeout(timer);
    timer = document.hidden ? null : setTimeout(poll, EVERY);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      clearTimeout(timer);
      timer = null;
    } else if (timer === null) {
      poll();
    }
  });
  schedule();
})();
