// rhaiflow's web UI: times in the reader's zone, live updates from the server's event stream,
// the log's live tail and search, graph zoom and pan, grid groups. Pages work without it.
(function () {
  "use strict";
  const body = document.body;
  const lang = body.dataset.lang || "en";

  // ---- times: relative text, absolute local and UTC on hover ----
  function span(ms) {
    const s = Math.abs(ms) / 1000;
    if (s < 45) return null;
    const units = lang === "zh"
      ? [[86400, " 天"], [3600, " 小时"], [60, " 分钟"]]
      : [[86400, " d"], [3600, " h"], [60, " min"]];
    for (const [n, u] of units) if (s >= n) return Math.round(s / n) + u;
    return Math.round(s) + (lang === "zh" ? " 秒" : " s");
  }
  function times(root) {
    root.querySelectorAll("time.t[datetime]").forEach((el) => {
      const d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      const ms = d.getTime() - Date.now();
      const text = span(ms);
      el.textContent = text === null ? body.dataset.now : (ms < 0 ? body.dataset.ago : body.dataset.in).replace("{d}", text);
      el.title = d.toLocaleString() + "  ·  " + d.toISOString().replace(".000Z", "Z").replace("T", " ") + " UTC";
    });
  }

  // ---- small things: auto-submitting selects, grid groups, confirmations ----
  function enhance(root) {
    times(root);
    root.querySelectorAll("select.autosubmit").forEach((s) => s.addEventListener("change", () => s.form.submit()));
    root.querySelectorAll("button.fold").forEach((b) => b.addEventListener("click", () => {
      const g = b.dataset.group;
      const open = b.getAttribute("aria-expanded") === "true";
      b.setAttribute("aria-expanded", open ? "false" : "true");
      b.textContent = open ? "▸" : "▾";
      document.querySelectorAll("table.grid tr[data-groups]").forEach((tr) => {
        if (tr.dataset.groups.split(" ").includes(g)) tr.classList.toggle("collapsed", open);
      });
    }));
    root.querySelectorAll("button[data-confirm]").forEach((b) => b.addEventListener("click", (e) => {
      if (!window.confirm(b.dataset.confirm)) e.preventDefault();
    }));
  }

  // ---- live updates: one event stream per page, the live part re-fetched on change ----
  const live = document.getElementById("live");
  let pending = null, fetching = false, again = false;
  function refreshLive() {
    if (fetching) { again = true; return; }
    fetching = true;
    const url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    fetch(url, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => {
        live.innerHTML = html;
        enhance(live);
        live.dispatchEvent(new CustomEvent("live-updated"));
      })
      .catch(() => {})
      .finally(() => { fetching = false; if (again) { again = false; schedule(); } });
  }
  function schedule() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; refreshLive(); }, 250);
  }
  if (live && window.EventSource) {
    const dag = body.dataset.liveDag;
    const es = new EventSource("/ui/events" + (dag ? "?dag_id=" + encodeURIComponent(dag) : ""));
    es.addEventListener("change", schedule);
    es.addEventListener("refresh", schedule);
    // What changed between this page's rendering and the stream's start (or a reconnection)
    // came before the stream: fetch the live part once it is open.
    es.addEventListener("open", schedule);
    window.addEventListener("beforeunload", () => es.close());
  }

  // ---- the log: search, wrap, live tail while the try runs ----
  const log = document.getElementById("log");
  if (log) {
    const original = log.textContent;
    const search = document.getElementById("log-search");
    const wrap = document.getElementById("log-wrap");
    if (wrap) wrap.addEventListener("change", () => log.classList.toggle("wrap", wrap.checked));
    function highlight() {
      const q = search ? search.value : "";
      if (!q) { log.textContent = log.dataset.full || original; return; }
      const text = log.dataset.full || original;
      const lines = text.split("\n").filter((l) => l.toLowerCase().includes(q.toLowerCase()));
      log.textContent = "";
      lines.forEach((l) => {
        const i = l.toLowerCase().indexOf(q.toLowerCase());
        log.append(l.slice(0, i));
        const m = document.createElement("mark");
        m.textContent = l.slice(i, i + q.length);
        log.append(m, l.slice(i + q.length) + "\n");
      });
    }
    if (search) search.addEventListener("input", highlight);
    let tail = null;
    function startTail() {
      if (log.dataset.tail !== "1" || !window.EventSource) return;
      const src = log.dataset.src + "&offset=" + encodeURIComponent(log.dataset.offset || "0");
      tail = new EventSource(src);
      // The try is over and its log sent: no reconnecting.
      tail.addEventListener("end", () => { if (tail) { tail.close(); tail = null; } });
      tail.addEventListener("append", (e) => {
        log.dataset.full = (log.dataset.full || original) + e.data + "\n";
        const empty = document.getElementById("log-empty");
        if (empty) empty.remove();
        const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
        if (search && search.value) highlight(); else log.textContent = log.dataset.full;
        if (atEnd) log.scrollTop = log.scrollHeight;
      });
    }
    startTail();
    if (live) live.addEventListener("live-updated", () => {
      const ti = document.getElementById("ti");
      // The try ended: the tail reads what is left, then stops.
      if (tail && ti && ti.dataset.finished === "1") setTimeout(() => { tail.close(); tail = null; }, 1500);
    });
    log.scrollTop = log.scrollHeight;
  }

  // ---- graph: wheel zoom and drag pan on the viewBox ----
  function zoomable() {
    const svg = document.getElementById("graph");
    if (!svg || svg.dataset.zoomReady) return;
    svg.dataset.zoomReady = "1";
    const vb = svg.viewBox.baseVal;
    svg.addEventListener("wheel", (e) => {
      e.preventDefault();
      const k = e.deltaY > 0 ? 1.1 : 0.9;
      const r = svg.getBoundingClientRect();
      const px = vb.x + (e.clientX - r.left) / r.width * vb.width;
      const py = vb.y + (e.clientY - r.top) / r.height * vb.height;
      vb.x = px - (px - vb.x) * k; vb.y = py - (py - vb.y) * k; vb.width *= k; vb.height *= k;
    }, { passive: false });
    let drag = null;
    svg.addEventListener("pointerdown", (e) => { if (e.target.closest("a")) return; drag = [e.clientX, e.clientY]; });
    window.addEventListener("pointerup", () => { drag = null; });
    svg.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const r = svg.getBoundingClientRect();
      vb.x -= (e.clientX - drag[0]) / r.width * vb.width;
      vb.y -= (e.clientY - drag[1]) / r.height * vb.height;
      drag = [e.clientX, e.clientY];
    });
  }

  enhance(document);
  zoomable();
  if (live) live.addEventListener("live-updated", zoomable);
  setInterval(() => times(document), 30000);
})();
