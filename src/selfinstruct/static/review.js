// The review page: shows the sample, saves every click at once, offers keyboard shortcuts.
// Every text from the run is put on the page with textContent, never parsed as HTML.
"use strict";

(function () {
  const ANSWERS = ["rating", "valid_instruction", "input_fits", "output_correct"];
  const RATING_KEYS = { a: "A", b: "B", c: "C", d: "D" };

  let rows = [];       // the sample, each row with its saved answers
  let questions = [];  // [{field, text}]
  let items = [];      // the <li> of each row
  let current = 0;     // the row the keyboard acts on
  let queue = Promise.resolve();  // saves go one after another, in click order
  let pending = 0;     // saves not yet answered by the server

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "className") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function isComplete(row) {
    return ANSWERS.every((field) => row[field] !== null && row[field] !== undefined);
  }

  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function showProgress() {
    const done = rows.filter(isComplete).length;
    document.getElementById("progress").textContent = `${done} of ${rows.length} reviewed`;
    document.title = `${done}/${rows.length} reviewed · selfinstruct`;
  }

  function textBlock(label, value, emptyText) {
    const block = el("pre", { className: value ? "text" : "text empty" });
    block.textContent = value || emptyText;
    return [el("div", { className: "label", text: label }), block];
  }

  function choice(i, field, value, label, title) {
    const button = el("button", {
      type: "button",
      "data-field": field,
      "data-value": JSON.stringify(value),
      "aria-pressed": "false",
      className: value === false ? "no" : "",
      text: label,
    });
    if (title) button.title = title;
    button.addEventListener("click", () => {
      select(i);
      const row = rows[i];
      // Clicking the chosen answer again clears it.
      save(i, field, row[field] === value ? null : value);
    });
    return button;
  }

  function renderRow(row, i, rubric) {
    const status = el("span", { className: "status" });
    const ratingChoices = el(
      "span",
      { className: "choices", role: "group", "aria-label": "Rating" },
      rubric.map((r) => choice(i, "rating", r.rating, r.rating, `${r.rating}: ${r.text}`)),
    );
    const answers = el("div", { className: "answers" }, [
      el("div", { className: "question" }, [
        el("span", { text: "Rating of the output (A best, D worst)" }),
        ratingChoices,
      ]),
      ...questions.map((q) =>
        el("div", { className: "question" }, [
          el("span", { text: q.text }),
          el("span", { className: "choices", role: "group", "aria-label": q.text }, [
            choice(i, q.field, true, "Yes"),
            choice(i, q.field, false, "No"),
          ]),
        ]),
      ),
    ]);
    const item = el(
      "li",
      { className: "example", id: `example-${i + 1}`, tabindex: "-1", "data-key": row.key },
      [
        el("div", { className: "example-head" }, [
          el("span", { text: `${i + 1} of ${rows.length} · example ${row.index + 1} of the file` }),
          status,
        ]),
        ...textBlock("Instruction", row.instruction, "(empty)"),
        ...textBlock("Input", row.input, "(no input)"),
        ...textBlock("Output", row.output, "(empty output)"),
        answers,
      ],
    );
    item.addEventListener("focusin", () => select(i, false));
    return item;
  }

  function paint(i) {
    const row = rows[i];
    const item = items[i];
    for (const button of item.querySelectorAll("button[data-field]")) {
      const chosen = row[button.dataset.field] === JSON.parse(button.dataset.value);
      button.setAttribute("aria-pressed", chosen ? "true" : "false");
    }
    item.classList.toggle("complete", isComplete(row));
  }

  function setStatus(i, text, kind) {
    const status = items[i].querySelector(".status");
    status.textContent = text;
    status.className = `status ${kind || ""}`;
  }

  function select(i, scroll = true) {
    if (i < 0 || i >= rows.length) return;
    if (items[current]) items[current].classList.remove("current");
    current = i;
    items[i].classList.add("current");
    if (scroll) {
      items[i].scrollIntoView({ block: "nearest" });
      if (!items[i].contains(document.activeElement)) items[i].focus({ preventScroll: true });
    }
  }

  function save(i, field, value) {
    const row = rows[i];
    const before = row[field];
    row[field] = value;  // shown at once; put back if the server refuses
    paint(i);
    showProgress();
    setStatus(i, "saving…");
    pending += 1;
    row.saving = (row.saving || 0) + 1;
    queue = queue.then(async () => {
      try {
        const response = await fetch("api/review", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ key: row.key, [field]: value }),
        });
        const data = await response.json().catch(() => ({}));
        if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
        // The server's copy is taken only once this row has no later click on its way:
        // an earlier answer would otherwise undo what the reviewer has clicked since.
        if (row.saving === 1) {
          for (const name of ANSWERS) row[name] = data.review[name];
          row.at = data.review.at;
          setStatus(i, "saved", "saved");
        }
        showError("");
      } catch (error) {
        row[field] = before;
        setStatus(i, "not saved", "error");
        showError(`Not saved (example ${i + 1}): ${error.message}. Is the review server running?`);
      }
      row.saving -= 1;
      pending -= 1;
      paint(i);
      showProgress();
    });
    return queue;
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || !rows.length) return;
    const key = event.key.toLowerCase();
    const row = rows[current];
    if (key === "j") select(current + 1);
    else if (key === "k") select(current - 1);
    else if (key === "u") {
      const next = rows.findIndex((r, j) => j > current && !isComplete(r));
      const first = rows.findIndex((r) => !isComplete(r));
      select(next >= 0 ? next : first);
    } else if (key in RATING_KEYS) {
      answer(current, "rating", RATING_KEYS[key]);
    } else if (key === "y" || key === "n") {
      const open = questions.find((q) => row[q.field] === null || row[q.field] === undefined);
      if (!open) {
        setStatus(current, "all questions answered: click to change one");
        return;
      }
      answer(current, open.field, key === "y");
    } else return;
    event.preventDefault();
  }

  // A keyboard answer; when it completes the example, the next one comes up.
  function answer(i, field, value) {
    const wasComplete = isComplete(rows[i]);
    save(i, field, value);
    if (!wasComplete && isComplete(rows[i]) && i + 1 < rows.length) {
      select(i + 1);
    }
  }

  async function start() {
    try {
      const response = await fetch("api/state", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      rows = data.rows;
      questions = data.questions;
      document.getElementById("run").textContent =
        `${data.run} · ${data.sample} of ${data.examples} examples, seed ${data.seed}`;
      const rubric = document.getElementById("rubric");
      for (const r of data.rubric) {
        rubric.append(el("dt", { text: r.rating }), el("dd", { text: r.text }));
      }
      const list = document.getElementById("rows");
      items = rows.map((row, i) => renderRow(row, i, data.rubric));
      list.append(...items);
      rows.forEach((_, i) => paint(i));
      showProgress();
      if (rows.length) {
        const firstOpen = rows.findIndex((r) => !isComplete(r));
        select(firstOpen >= 0 ? firstOpen : 0, false);
      }
      document.addEventListener("keydown", onKey);
      // Leaving while a click is still on its way would lose it: ask first.
      window.addEventListener("beforeunload", (event) => {
        if (pending > 0) {
          event.preventDefault();
          event.returnValue = "";
        }
      });
      document.body.dataset.ready = "true";
    } catch (error) {
      showError(`Could not load the sample: ${error.message}`);
    }
  }

  start();
})();
