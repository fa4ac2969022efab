// The console's only script: live fragments over SSE, and confirmation of forms that ask for it.
(function () {
  "use strict";
  function confirmForms(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      if (form.dataset.bound) { return; }
      form.dataset.bound = "1";
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
      });
    });
  }
  var source = null;
  function follow(live) {
    var last = null;
    source = new EventSource(live.dataset.stream);
    source.onmessage = function (event) {
      var snapshot = JSON.parse(event.data);
      if (snapshot.html === last) { return; }  // unchanged: keep the page as it is (a focused button, a selection)
      last = snapshot.html;
      // The server renders the fragment with every value escaped; swapped whole, as the page first had it.
      live.innerHTML = snapshot.html;
      live.dataset.updated = String(Date.now());
      confirmForms(live);
    };
  }
  function start() {
    var live = document.getElementById("live");
    if (live && live.dataset.stream && window.EventSource && !source) { follow(live); }
  }
  document.addEventListener("DOMContentLoaded", function () { confirmForms(document); start(); });
  // A page left (or kept in the back-forward cache) closes its stream: a browser opens few connections
  // per host, and streams of pages no one looks at would hold them all.
  function stop() { if (source) { source.close(); source = null; } }
  window.addEventListener("pagehide", stop);
  window.addEventListener("pageshow", function (event) { if (event.persisted) { start(); } });
  // So does a tab in the background (and opens it again when shown): Chromium allows 6 connections per
  // host, and six console pages opened in tabs held them all: the seventh tab did not load.
  document.addEventListener("visibilitychange", function () { if (document.hidden) { stop(); } else { start(); } });
})();
