// Relay console: the live parts of each page, without a reload and without a framework.
// Every element with data-live="NAME" is re-fetched as `?fragment=NAME` of the current page
// (server-rendered, already escaped) when the event stream says something was stored, and
// every few seconds for delivery outcomes, which have no stream of their own.
(function () {
  "use strict";
  var REFRESH_MS = 2000;
  var status = document.getElementById("live-status");
  var last = new Map();
  var running = false;
  var again = false;
  var timer = null;

  function setStatus(state, text) {
    if (status) { status.dataset.state = state; status.textContent = text; }
  }

  function fragmentUrl(name) {
    var url = new URL(window.location.href);
    url.searchParams.delete("notice");
    url.searchParams.delete("n");
    url.searchParams.set("fragment", name);
    return url.toString();
  }

  // Relative times change every second; compare the markup without them.
  function stable(html) {
    return html.replace(/(<time[^>]*>)[^<]*(<\/time>)/g, "$1$2");
  }

  function ago(date) {
    var seconds = (Date.now() - date.getTime()) / 1000;
    var future = seconds < 0;
    seconds = Math.abs(seconds);
    if (seconds < 5) { return "just now"; }
    var units = [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]];
    for (var i = 0; i < units.length; i++) {
      if (seconds >= units[i][0]) {
        var text = Math.floor(seconds / units[i][0]) + " " + units[i][1];
        return future ? "in " + text : text + " ago";
      }
    }
    return "just now";
  }

  function tick() {
    document.querySelectorAll("time.rel").forEach(function (el) {
      var at = new Date(el.getAttribute("datetime"));
      if (!isNaN(at.getTime())) { el.textContent = ago(at); }
    });
  }

  async function refreshOne(el) {
    var name = el.dataset.live;
    var response = await fetch(fragmentUrl(name), { credentials: "same-origin" });
    if (response.status === 401) { window.location.assign("/ui/login"); return; }
    if (!response.ok) { return; }
    var html = await response.text();
    var key = stable(html);
    if (!last.has(name)) { last.set(name, stable(el.innerHTML)); }
    if (last.get(name) === key) { return; }
    last.set(name, key);
    var open = Array.prototype.map.call(el.querySelectorAll("details[open]"), function (d) { return d.id; });
    var focused = document.activeElement && el.contains(document.activeElement) ? document.activeElement : null;
    var focusKey = focused ? (focused.id || focused.getAttribute("aria-label")) : null;
    el.innerHTML = html;
    open.forEach(function (id) { var d = id && document.getElementById(id); if (d) { d.open = true; } });
    if (focusKey) {
      var again = document.getElementById(focusKey) || el.querySelector('[aria-label="' + CSS.escape(focusKey) + '"]');
      if (again) { again.focus(); }
    }
    tick();
  }

  async function refresh() {
    if (running) { again = true; return; }
    running = true;
    try {
      var parts = document.querySelectorAll("[data-live]");
      for (var i = 0; i < parts.length; i++) {
        try { await refreshOne(parts[i]); } catch (e) { setStatus("down", "offline"); }
      }
    } finally {
      running = false;
      if (again) { again = false; refresh(); }
    }
  }

  function soon() {
    if (timer === null) { timer = setTimeout(function () { timer = null; refresh(); }, 250); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 15000);
    var stream = document.body.dataset.stream;
    if (!stream) { return; }
    if (window.EventSource) {
      var source = new EventSource(stream);
      source.onopen = function () { setStatus("live", "live"); };
      source.onerror = function () { setStatus("down", "reconnecting"); };
      source.onmessage = function () { soon(); };
      // Close it when the page goes: a kept-open stream would hold one of the browser's few
      // connections to this host while the next page loads.
      window.addEventListener("pagehide", function () { source.close(); });
    }
    if (document.querySelector("[data-live]")) { setInterval(refresh, REFRESH_MS); }
  });
})();
