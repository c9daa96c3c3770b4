/* What the owners' pages need beyond htmx: short filter URLs, copy to clipboard, focus after
   an action, auto-submitting pickers. A file, not inline: the CSP allows only our own scripts. */
(function () {
  "use strict";

  // Leave empty filter fields out of GET requests so pushed, shareable URLs stay short.
  document.addEventListener("htmx:configRequest", function (evt) {
    if (evt.detail.verb !== "get") return;
    var data = evt.detail.formData;
    Array.from(new Set(data.keys())).forEach(function (key) {
      if (data.getAll(key).every(function (value) { return value === ""; })) data.delete(key);
    });
  });

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // Plain http on another host has no Clipboard API: fall back to a selected textarea.
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.className = "offscreen";
      area.setAttribute("readonly", "");
      document.body.appendChild(area);
      area.select();
      var ok = document.execCommand("copy");
      document.body.removeChild(area);
      if (ok) resolve(); else reject(new Error("copy failed"));
    });
  }

  document.addEventListener("click", function (evt) {
    var button = evt.target.closest("[data-copy-target]");
    if (!button) return;
    var source = document.getElementById(button.dataset.copyTarget);
    var status = button.parentElement.querySelector(".copy-status");
    copyText(source.textContent.trim()).then(
      function () { status.textContent = button.dataset.copied || "Copied"; },
      function () { status.textContent = button.dataset.copyFailed || "Copy failed"; }
    );
  });

  // After an action replaced a row, keep keyboard users in that row (polling never moves focus).
  document.addEventListener("htmx:afterSettle", function (evt) {
    var config = evt.detail.requestConfig;
    if (!config || config.verb !== "post") return;
    var id = evt.detail.target && evt.detail.target.id;
    var row = id && document.getElementById(id);
    if (row && (!document.activeElement || document.activeElement === document.body)) {
      row.focus();
    }
  });

  document.addEventListener("change", function (evt) {
    if (evt.target.matches("select[data-autosubmit]") && evt.target.form) {
      evt.target.form.requestSubmit();
    }
  });
})();
