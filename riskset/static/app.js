// Progressive enhancement only: every page works without this file (and without htmx).
(function () {
  "use strict";

  // After htmx puts a result (or an error) in place, move focus to its heading so keyboard and
  // screen-reader users land on what changed instead of staying at the button.
  document.addEventListener("htmx:after:swap", function () {
    var heading = document.querySelector("#result [data-focus]");
    if (heading) {
      heading.focus();
    }
  });

  // Print buttons stay hidden until this script can make them work; the browser's own Print
  // menu works either way.
  function setUpPrint() {
    document.querySelectorAll("[data-print]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        window.print();
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setUpPrint);
  } else {
    setUpPrint();
  }
})();
