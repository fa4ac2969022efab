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
  function follow(live) {
    var source = new EventSource(live.dataset.stream);
    source.onmessage = function (event) {
      var snapshot = JSON.parse(event.data);
      // The server renders the fragment with every value escaped; swapped whole, as the page first had it.
      live.innerHTML = snapshot.html;
      live.dataset.updated = String(Date.now());
      confirmForms(live);
    };
  }
  document.addEventListener("DOMContentLoaded", function () {
    confirmForms(document);
    var live = document.getElementById("live");
    if (live && live.dataset.stream && window.EventSource) { follow(live); }
  });
})();
