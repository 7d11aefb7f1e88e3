// rnntext demo page: plain JavaScript, no build step, no request outside this service.
// Talks to the same typed API as any client: POST /classify, POST /generate (server-sent events), POST /stop,
// POST /end_session and GET /info; errors are the service's own {"error", "kind"} bodies.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "rnntext-api-key";

  // Short texts written for this page (no corpus text), one per topic.
  const SAMPLES = {
    business: "Shares in the supermarket chain fell 4% after it warned that annual profits would miss forecasts, " +
      "blaming weaker consumer spending and higher energy costs. Analysts expect the board to cut the dividend.",
    entertainment: "The director's new film won best picture at the awards on Sunday night, and its lead actress " +
      "took the prize for best performance. The soundtrack has also topped the album charts.",
    politics: "The prime minister faced MPs' questions over the budget as opposition leaders accused the " +
      "government of breaking its election promises on tax. A vote on the bill is expected next week.",
    sport: "The striker scored twice in the second half as the champions came from behind to win 3-1 and " +
      "move four points clear at the top of the league, with the coach praising his team's fitness.",
    tech: "The company unveiled a faster mobile phone chip and new software that lets users stream games over " +
      "broadband networks. Security researchers warned that the update also fixes a serious flaw.",
  };

  const state = {
    key: sessionStorage.getItem(KEY_STORE) || "",
    limits: null,          // /info settings: the inputs' bounds
    run: null,             // the generation in flight: {controller, sessionId, stopping, stopped}
    sessionId: null,       // the kept session the last complete generation left
  };

  // ---- helpers --------------------------------------------------------------------------------------------
  function headers(json = true) {
    const h = json ? { "Content-Type": "application/json" } : {};
    if (state.key) h.Authorization = "Bearer " + state.key;
    return h;
  }

  function showError(message, title) {
    $("error-title").textContent = title || "Error";
    $("error-text").textContent = message;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error-text").textContent = "";
  }

  // The service's own message for a non-2xx answer ({"error", "kind"}), or the status line.
  async function serviceError(resp) {
    let doc = null;
    try { doc = await resp.json(); } catch (_) { /* not JSON: use the status */ }
    if (resp.status === 401) $("key-panel").hidden = false;
    const message = doc && typeof doc.error === "string" ? doc.error : `HTTP ${resp.status} ${resp.statusText}`;
    return `${message} (${resp.status}${doc && doc.kind ? ", " + doc.kind : ""})`;
  }

  async function post(path, body, signal) {
    return fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  }

  function numberOrNull(id) {
    const v = $(id).value.trim();
    return v === "" ? null : Number(v);
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const c of children) node.append(c);
    return node;
  }

  // ---- classify -------------------------------------------------------------------------------------------
  function renderBars(probabilities) {
    const box = $("classify-result");
    box.replaceChildren();
    const sorted = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
    sorted.forEach(([label, p], i) => {
      const pct = (100 * p).toFixed(1) + "%";
      const fill = el("div", { className: "fill" });
      fill.style.width = (100 * p).toFixed(2) + "%";
      const row = el("div", { className: "bar" + (i === 0 ? " best" : "") },
        el("span", { className: "name", textContent: label }),
        el("div", { className: "track" }, fill),
        el("span", { className: "pct", textContent: pct }));
      row.dataset.label = label;
      row.dataset.prob = String(p);
      row.setAttribute("role", "img");
      row.setAttribute("aria-label", `${label}: ${pct}`);
      box.append(row);
    });
  }

  async function classify() {
    const button = $("classify-button");
    button.disabled = true;
    $("classify-meta").textContent = "Classifying…";
    const t0 = performance.now();
    try {
      const resp = await post("/classify", { texts: [$("classify-input").value] });
      const ms = performance.now() - t0;
      if (!resp.ok) {
        $("classify-result").replaceChildren();
        $("classify-meta").textContent = "";
        showError(await serviceError(resp), "Classify failed");
        return;
      }
      const [prediction] = await resp.json();
      clearError();
      renderBars(prediction.probabilities);
      $("classify-meta").textContent = `${prediction.label} · ${ms.toFixed(1)} ms round trip`;
    } catch (err) {
      $("classify-meta").textContent = "";
      showError(String(err.message || err), "Classify failed");
    } finally {
      button.disabled = false;
    }
  }

  // ---- generate -------------------------------------------------------------------------------------------
  function setRunning(running) {
    $("generate-button").disabled = running;
    $("generate-stop").disabled = !running;
    $("generate-continue").disabled = running || !state.sessionId;
  }

  const SESSION_HEADER = "X-Rnntext-Session-Id";   // the kept session's id, sent before the first event

  // The status line's ending for a done event's finish_reason.
  function finishText(reason, chars) {
    switch (reason) {
      case "stopped": return ` · stopped after ${chars} character${chars === 1 ? "" : "s"}`;
      case "stop": return " · done (stop sequence)";
      case "length": return " · done (max characters)";
      case "error": return " · ended by an error";
      default: return " · done";
    }
  }

  // Server-sent events from a fetch body: each event is one "data: <JSON>" line and a blank line.
  async function* events(resp) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (block.startsWith("data: ")) yield JSON.parse(block.slice(6));
      }
    }
  }

  function samplingBody() {
    return {
      max_chars: Number($("generate-max-chars").value),
      temperature: Number($("generate-temperature").value),
      top_k: numberOrNull("generate-top-k"),
      top_p: Number($("generate-top-p").value),
      keep_session: true,    // always: Continue is possible after any complete generation
    };
  }

  async function generate(continuing) {
    if (state.run) return;
    const body = samplingBody();
    const previous = state.sessionId;
    if (continuing) {
      body.session_id = previous;
      body.prompt = "";
    } else {
      body.prompt = $("generate-prompt").value;
      body.seed = numberOrNull("generate-seed");
      $("generate-prompt-echo").textContent = body.prompt;
      $("generate-output").textContent = "";
      if (previous) endSession(previous);     // a new Generate leaves the old session behind: free it now
    }
    state.sessionId = null;
    // sessionId: the kept session this stream advances (its response header); stopping: Stop asked the service
    // to end the stream (POST /stop), which then still sends its last text and a done event; stopped: the fetch
    // was aborted (Stop's fallback, or leaving the page)
    const run = { controller: new AbortController(), sessionId: null, responded: false, stopWanted: false,
                  stopping: false, stopped: false };
    state.run = run;
    setRunning(true);
    const output = $("generate-output");
    const box = $("generate-box");
    const metaEl = $("generate-meta");
    const t0 = performance.now();
    let chars = 0;
    const meta = (suffix) => {
      const s = (performance.now() - t0) / 1000;
      metaEl.textContent = `${chars} chars · ${s > 0 ? Math.round(chars / s) : 0} chars/s${suffix || ""}`;
    };
    run.meta = meta;
    metaEl.textContent = continuing ? "Continuing…" : "Generating…";
    delete metaEl.dataset.finishReason;
    $("generate-session").textContent = "";
    try {
      const resp = await post("/generate", body, run.controller.signal);
      if (!resp.ok) {
        // refused before it started (busy, overloaded, bad field): a continued session is still there
        if (continuing && resp.status !== 404) state.sessionId = previous;
        showError(await serviceError(resp), "Generate failed");
        metaEl.textContent = "";
        return;
      }
      run.sessionId = resp.headers.get(SESSION_HEADER) || (continuing ? previous : null);
      run.responded = true;
      if (run.stopWanted) requestStop(run);     // Stop was pressed before the answer came
      clearError();
      for await (const ev of events(resp)) {
        if (ev.text) {
          output.append(ev.text);      // one text node per chunk: the text grows as it streams
          chars += ev.text.length;
          box.scrollTop = box.scrollHeight;
          meta(run.stopping ? " · stopping…" : "");
        }
        if (ev.error) showError(`${ev.error} (${ev.kind})`, "Generation stopped");
        if (ev.done) {
          state.sessionId = ev.session_id || null;
          const reason = ev.finish_reason || (ev.error ? "error" : "");
          if (reason) metaEl.dataset.finishReason = reason;
          meta(finishText(reason, typeof ev.chars === "number" ? ev.chars : chars));
          $("generate-session").textContent = state.sessionId ? `Session ${state.sessionId} kept: Continue goes on from here.` : "";
        }
      }
    } catch (err) {
      if (run.stopped) {
        meta(" · stopped (not saved)");
        metaEl.dataset.finishReason = "aborted";
        // the continued session stays at its last saved point, which this page has already shown past: end it
        // once the service has noticed the closed stream (it expires by itself if this is refused)
        if (continuing) setTimeout(() => endSession(previous), 1000);
        $("generate-session").textContent = "Stopped: a stopped request is not saved, so Continue is off until the next Generate.";
      } else {
        showError(String(err.message || err), "Generate failed");
      }
    } finally {
      state.run = null;
      setRunning(false);
    }
  }

  // Stop: ask the service to end the stream at the next character (POST /stop). The stream then still sends its
  // last text and a done event with finish_reason "stopped", and the session is saved exactly there, so Continue
  // goes on from what the page shows. Without a session id, or when /stop fails, abort the fetch instead.
  function stop() {
    const run = state.run;
    if (!run || run.stopping || run.stopped) return;
    $("generate-stop").disabled = true;
    if (!run.responded) {
      run.stopWanted = true;             // the session id comes with the response's headers
      $("generate-meta").textContent = "Stopping…";
      return;
    }
    requestStop(run);
  }

  async function requestStop(run) {
    if (!run.sessionId) { abortRun(run); return; }
    run.stopping = true;
    run.meta(" · stopping…");
    let resp;
    try {
      resp = await post("/stop", { session_id: run.sessionId });
    } catch (_) {
      resp = null;                       // the service could not be reached: abort below
    }
    if (state.run !== run) return;       // the stream has ended meanwhile: its done event said how
    if (resp && (resp.ok || resp.status === 409)) return;   // 409 not_generating: it was just ending by itself
    abortRun(run);
  }

  // Close the stream's connection: the service frees the stream's slot and keeps the session as it was before
  // this request (so the page turns Continue off).
  function abortRun(run) {
    if (!run || state.run !== run) return;
    run.stopped = true;
    run.controller.abort();
  }

  function leave() {
    abortRun(state.run);
  }

  function endSession(sessionId) {
    post("/end_session", { session_id: sessionId }).catch(() => { /* expires by itself */ });
  }

  // ---- models (/info) -------------------------------------------------------------------------------------
  function fmt(v) {
    if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(4);
    return String(v);
  }

  function table(rows) {
    const t = el("table", { className: "models" });
    for (const [k, v] of rows) {
      if (v === undefined || v === null) continue;
      t.append(el("tr", {}, el("th", { scope: "row", textContent: k }), el("td", { textContent: fmt(v) })));
    }
    return t;
  }

  function renderInfo(info) {
    const s = info.settings;
    const grid = el("div", { className: "models-grid" });
    const m = info.models.classifier || {}, g = info.models.generator || {};
    const cm = m.metrics || {}, gm = g.metrics || {}, cc = m.config || {}, gc = g.config || {};
    const cv = m.cv, cal = m.calibration;
    const pm = (mean, std) => `${fmt(mean)} ± ${fmt(std)}`;
    grid.append(el("div", {},
      el("h3", { textContent: "Classifier" }),
      table([["created", m.created], ["architecture", `${cc.bidirectional ? "Bi" : ""}${(cc.cell || "").toUpperCase()} ` +
               `${cc.num_layers}×${cc.hidden_size}, ${cc.pooling} pooling` +
               (cc.wide_features ? ` + linear over ${cc.wide_features} n-grams` : "")],
             // the figures that rank models: cross-validation, the SVM on the same folds, calibrated ECE
             [cv ? `${cv.folds}-fold CV accuracy (${cv.articles} articles)` : null, cv ? pm(cv.accuracy_mean, cv.accuracy_std) : null],
             [cv ? "TF-IDF + SVM, same folds" : null, cv ? pm(cv.svm_accuracy_mean, cv.svm_accuracy_std) : null],
             [cv ? "minus SVM, points [95% CI]" : null, cv ? `${(100 * cv.minus_svm).toFixed(2)} ` +
               `[${(100 * cv.minus_svm_ci95[0]).toFixed(2)}, ${(100 * cv.minus_svm_ci95[1]).toFixed(2)}]` : null],
             [cal ? "calibration (ECE, 15 bins)" : null, cal ? (cal.cv_ece !== undefined ?
               `${fmt(cal.cv_ece)} out-of-fold, ${fmt(cal.test_ece)} test (T = ${fmt(cal.temperature)})` :
               `${fmt(cal.test_ece)} test (T = ${fmt(cal.temperature)})`) : null],
             [`test split accuracy${cv ? " (secondary)" : ""}`, cm.test_accuracy], ["test macro-F1", cm.test_macro_f1],
             ["test articles", cm.test_n],
             [`TF-IDF + SVM, test split${cv ? " (secondary)" : ""}`, cm.baseline_tfidf_svm_accuracy],
             ["precision", info.precision.classifier], ["provider", (info.providers.classifier || []).join(", ")]])));
    grid.append(el("div", {},
      el("h3", { textContent: "Generator" }),
      table([["created", g.created], ["architecture", `${(gc.cell || "").toUpperCase()} ${gc.num_layers}×${gc.hidden_size}, ` +
               `${gc.vocab_size} characters`],
             ["validation bits/char", gm.val_bits_per_char], ["parameters", gm.params],
             ["precision", info.precision.generator], ["provider", (info.providers.generator || []).join(", ")]])));
    grid.append(el("div", {},
      el("h3", { textContent: "Service" }),
      table([["device", info.device], ["workers", info.workers], ["texts per request", s.max_texts],
             ["characters per text", s.max_text_chars], ["prompt characters", s.max_prompt_chars],
             ["characters per generation", s.max_chars], ["concurrent streams", s.max_streams],
             ["session idle expiry (s)", s.session_ttl_s], ["session store", s.session_store],
             ["API key required", s.api_key_required ? "yes" : "no"]])));
    $("models").replaceChildren(grid);
  }

  function applyLimits(s) {
    $("generate-max-chars").max = s.max_chars;
    if (Number($("generate-max-chars").value) > s.max_chars) $("generate-max-chars").value = s.max_chars;
    $("generate-prompt").maxLength = s.max_prompt_chars;
    $("classify-input").maxLength = s.max_text_chars;
  }

  async function loadInfo() {
    try {
      const resp = await fetch("/info", { headers: headers(false) });
      if (!resp.ok) {
        const message = await serviceError(resp);
        $("models").replaceChildren(el("p", { className: "meta", textContent: "Not loaded: " + message }));
        if (resp.status === 401) showError(message, state.key ? "Wrong API key" : "API key needed");
        return;
      }
      const info = await resp.json();
      state.limits = info.settings;
      applyLimits(info.settings);
      renderInfo(info);
      $("key-panel").hidden = !info.settings.api_key_required;
    } catch (err) {
      showError(String(err.message || err), "Could not reach the service");
    }
  }

  // ---- wiring ---------------------------------------------------------------------------------------------
  function init() {
    const samples = document.querySelector(".samples");
    for (const [topic, text] of Object.entries(SAMPLES)) {
      const b = el("button", { type: "button", className: "sample", textContent: topic });
      b.dataset.testid = "sample-" + topic;
      b.setAttribute("aria-label", `Use the ${topic} sample text`);
      b.addEventListener("click", () => { $("classify-input").value = text; $("classify-input").focus(); });
      samples.append(b);
    }
    $("classify-input").value = SAMPLES.sport;
    $("classify-button").addEventListener("click", classify);
    $("classify-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) classify();
    });
    $("generate-button").addEventListener("click", () => generate(false));
    $("generate-continue").addEventListener("click", () => generate(true));
    $("generate-stop").addEventListener("click", stop);
    $("error-close").addEventListener("click", clearError);
    $("api-key").value = state.key;
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      state.key = $("api-key").value.trim();
      sessionStorage.setItem(KEY_STORE, state.key);
      clearError();
      loadInfo();
    });
    $("key-forget").addEventListener("click", () => {
      state.key = "";
      $("api-key").value = "";
      sessionStorage.removeItem(KEY_STORE);
    });
    // leaving the page mid-stream closes the connection (the browser aborts fetches on unload): say so explicitly
    window.addEventListener("pagehide", leave);
    loadInfo();
  }

  init();
})();
