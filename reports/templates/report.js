/* ecap report behaviour: filterable, sortable tables, copy buttons, print with
   evidence expanded. Everything here is optional; the report reads the same
   without JavaScript. It reads only the page's own text, never evaluates it. */
(function () {
  "use strict";
  var each = function (list, fn) { Array.prototype.forEach.call(list, fn); };

  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    try { return document.execCommand("copy"); } catch (e) { return false; }
  }

  each(document.querySelectorAll("button.copy[data-copy]"), function (btn) {
    btn.hidden = false;
    btn.addEventListener("click", function () {
      var src = document.getElementById(btn.getAttribute("data-copy"));
      if (!src) { return; }
      var done = function (ok) {
        btn.textContent = ok ? "Copied" : "Selected: press Ctrl+C";
        window.setTimeout(function () { btn.textContent = "Copy"; }, 1800);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(src.textContent).then(
          function () { done(true); },
          function () { done(selectText(src)); });
      } else {
        done(selectText(src));
      }
    });
  });

  function sortKey(cell) {
    if (!cell) { return ""; }
    var v = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    var n = Number(v);
    return (v !== "" && !isNaN(n)) ? n : v.toLowerCase();
  }

  each(document.querySelectorAll("table.data"), function (table) {
    var tbody = table.tBodies[0];
    if (!tbody || !table.tHead) { return; }
    var rows = Array.prototype.slice.call(tbody.rows);
    var tools = document.createElement("div");
    tools.className = "tools";
    var input = document.createElement("input");
    input.type = "search";
    input.placeholder = "Filter rows…";
    input.setAttribute("aria-label", "Filter " + (table.getAttribute("aria-label") || "table"));
    var count = document.createElement("span");
    count.className = "count";
    tools.appendChild(input);
    tools.appendChild(count);
    table.parentNode.insertBefore(tools, table);
    var texts = rows.map(function (r) { return r.textContent.toLowerCase(); });
    var update = function () {
      var q = input.value.trim().toLowerCase();
      var shown = 0;
      rows.forEach(function (r, i) {
        var show = !q || texts[i].indexOf(q) >= 0;
        r.hidden = !show;
        if (show) { shown++; }
      });
      count.textContent = shown + " of " + rows.length + " rows";
    };
    input.addEventListener("input", update);
    update();
    var heads = table.tHead.rows[0].cells;
    each(heads, function (th, idx) {
      var btn = document.createElement("button");
      btn.type = "button";
      btn.className = "sort";
      while (th.firstChild) { btn.appendChild(th.firstChild); }
      th.appendChild(btn);
      btn.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        each(heads, function (c) { c.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var order = rows.map(function (r, i) { return [sortKey(r.cells[idx]), i]; });
        order.sort(function (a, b) {
          var x = a[0], y = b[0];
          var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
          return (asc ? c : -c) || a[1] - b[1];
        });
        var frag = document.createDocumentFragment();
        var sortedRows = order.map(function (o) { return rows[o[1]]; });
        var sortedTexts = order.map(function (o) { return texts[o[1]]; });
        sortedRows.forEach(function (r) { frag.appendChild(r); });
        tbody.appendChild(frag);
        rows = sortedRows;
        texts = sortedTexts;
      });
    });
  });

  var opened = [];
  window.addEventListener("beforeprint", function () {
    each(document.querySelectorAll("details:not([open])"), function (d) { d.open = true; opened.push(d); });
  });
  window.addEventListener("afterprint", function () {
    opened.forEach(function (d) { d.open = false; });
    opened = [];
  });
  document.documentElement.setAttribute("data-js", "on");
})();
