"use strict";
// headwise report: hover tooltips on head maps, the cache budget control, needle-cell details and
// collapsed reader text. Data comes from the JSON blocks beside each view; text is set with textContent.
(function () {
  const tip = document.getElementById("tip");
  const data = (section, cls) => JSON.parse(section.querySelector("script." + cls).textContent);
  const pct = (x) => Math.round(100 * x) + "%";

  document.querySelectorAll("section.headmap").forEach((section) => {
    const cells = section.querySelectorAll("rect.cell");
    cells.forEach((cell) => {
      cell.addEventListener("mousemove", (event) => {
        const d = cell.dataset;
        tip.textContent = "layer " + d.layer + ", head " + d.head + " (KV head " + d.kv + ")\nscore " + d.score +
          (d.sink === "" ? "" : "\nsink " + d.sink) + (cell.classList.contains("kept") ? "\nkept in full" : "");
        tip.style.left = event.clientX + 14 + "px";
        tip.style.top = event.clientY + 14 + "px";
        tip.hidden = false;
      });
      cell.addEventListener("mouseleave", () => { tip.hidden = true; });
    });
    const plans = data(section, "plans");
    const slider = section.querySelector("input.budget");
    const show = () => {
      const plan = plans[Number(slider.value)];
      section.querySelector("output.budget-label").textContent = pct(plan.budget);
      const keep = new Set((plan.full || []).map(([l, k]) => l + "-" + k));
      cells.forEach((c) => c.classList.toggle("kept", keep.has(c.dataset.layer + "-" + c.dataset.kv)));
      section.querySelector("p.plan").textContent = plan.error ? plan.error :
        plan.count + " of " + plan.total + " KV heads kept in full; the others keep a window of " +
        plan.window + " tokens";
    };
    slider.addEventListener("input", show);
    show();
  });

  document.querySelectorAll("section.niah").forEach((section) => {
    const outcomes = data(section, "outcomes");
    const detail = section.querySelector(".detail");
    const line = (parent, label, text) => {
      const p = document.createElement("div");
      const l = document.createElement("span");
      l.className = "label";
      l.textContent = label + ": ";
      p.append(l, document.createTextNode(text));
      parent.append(p);
    };
    const open = (cell) => {
      section.querySelectorAll("td.cell.selected").forEach((c) => c.classList.remove("selected"));
      cell.classList.add("selected");
      detail.replaceChildren();
      const found = outcomes[cell.dataset.key] || [];
      if (!found.length) { line(detail, "no tests", "this cell was not run"); return; }
      found.forEach((o) => {
        const box = document.createElement("div");
        box.className = "outcome" + (o.correct ? " correct" : "");
        line(box, o.correct ? "found" : "missed", o.length + " tokens, needle at " + pct(o.depth));
        if (o.needle) line(box, "needle", o.needle);
        line(box, "question", o.question);
        line(box, "expected", o.answer);
        line(box, "answer", o.response);
        if (o.kv_bytes != null && o.full_kv_bytes) line(box, "KV held", pct(o.kv_bytes / o.full_kv_bytes) + " of full");
        if (o.kept_needle != null) line(box, "needle kept by the reader", o.kept_needle ? "yes" : "no");
        detail.append(box);
      });
    };
    section.querySelectorAll("td.cell").forEach((cell) => {
      cell.addEventListener("click", () => open(cell));
      cell.addEventListener("keydown", (event) => { if (event.key === "Enter") open(cell); });
    });
  });

  document.querySelectorAll("section.answer").forEach((section) => {
    const gaps = data(section, "gaps");
    section.querySelectorAll("button.gap").forEach((button) => {
      button.addEventListener("click", () => {
        const span = document.createElement("span");
        span.className = "ctx";
        span.textContent = gaps[Number(button.dataset.gap)];
        button.replaceWith(span);
      });
    });
  });
})();
