// fluxpaint mask painter (SPEC 12): paint over an image, submit a PNG mask (white = repaint on black) of its size.
(() => {
  "use strict";

  const TINT = "rgb(255, 40, 90)"; // the strokes' colour on screen, shown at TINT_ALPHA over the image
  const TINT_ALPHA = 0.5;
  const MAX_SCALE = 16; // screen px per image px at most
  const ZOOM_STEP = 1.25;

  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const stage = $("stage");
  const statusLine = $("status");
  const sizeInput = $("size");
  const ctx = canvas.getContext("2d");
  const controls = ["brush", "eraser", "pan", "size", "undo", "redo", "clear", "invert", "zoom-out", "fit", "zoom-in",
    "submit"].map($);
  const endpoint = location.pathname.replace(/\/+$/, "");

  let image = null; // ImageBitmap of the image at its natural size
  let mask = null; // canvas of the image's size: opaque TINT where to repaint, transparent where to keep
  let maskCtx = null;
  const ops = []; // what was done, replayed on undo: strokes, clears and inverts
  const undone = [];
  let tool = "brush";
  let stroke = null; // the stroke being drawn (it is the last op)
  let gesture = null; // pinch or pan: the image point under the pointers' centre and the spread at its start
  let hover = null; // where a mouse or pen hovers, for the brush outline
  let busy = false;
  let finished = false; // the mask was taken, or the link cannot be used
  let frameAsked = false;
  let dpr = 1;
  // canvas px (CSS) = image px * scale + offset
  const view = { scale: 1, x: 0, y: 0, fitScale: 1, moved: false };
  const pointers = new Map(); // pointerId -> canvas position (CSS px) of the pointers that are down

  function setStatus(text, kind) {
    statusLine.textContent = text;
    statusLine.className = kind || "";
  }

  function updateControls() {
    const off = !image || busy || finished;
    for (const control of controls) control.disabled = off;
    if (off) return;
    $("undo").disabled = ops.length === 0;
    $("redo").disabled = undone.length === 0;
    $("clear").disabled = ops.length === 0;
  }

  function setTool(name) {
    tool = name;
    for (const id of ["brush", "eraser", "pan"]) $(id).setAttribute("aria-pressed", String(id === name));
    canvas.classList.toggle("pan", name === "pan");
    requestRender();
  }

  // --- view -------------------------------------------------------------------------------------------------

  function local(event) {
    const rect = canvas.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top };
  }

  function toImage(point) {
    return { x: (point.x - view.x) / view.scale, y: (point.y - view.y) / view.scale };
  }

  function clampScale(scale) {
    return Math.min(Math.max(scale, view.fitScale / 2), Math.max(MAX_SCALE, view.fitScale));
  }

  function fit() {
    const width = stage.clientWidth;
    const height = stage.clientHeight;
    view.fitScale = Math.min(width / image.width, height / image.height);
    view.scale = view.fitScale;
    view.x = (width - image.width * view.scale) / 2;
    view.y = (height - image.height * view.scale) / 2;
    view.moved = false;
    requestRender();
  }

  function zoomAt(point, factor) {
    const anchor = toImage(point);
    view.scale = clampScale(view.scale * factor);
    view.x = point.x - anchor.x * view.scale;
    view.y = point.y - anchor.y * view.scale;
    view.moved = true;
    requestRender();
  }

  function zoomCentre(factor) {
    zoomAt({ x: stage.clientWidth / 2, y: stage.clientHeight / 2 }, factor);
  }

  function resize() {
    dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(stage.clientWidth * dpr));
    canvas.height = Math.max(1, Math.round(stage.clientHeight * dpr));
    if (image && !view.moved) fit();
    requestRender();
  }

  function requestRender() {
    if (frameAsked) return;
    frameAsked = true;
    requestAnimationFrame(render);
  }

  function render() {
    frameAsked = false;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!image) return;
    ctx.setTransform(dpr * view.scale, 0, 0, dpr * view.scale, dpr * view.x, dpr * view.y);
    ctx.imageSmoothingEnabled = view.scale < 2; // zoomed in, the pixels stay sharp so edges can be followed
    ctx.drawImage(image, 0, 0);
    ctx.globalAlpha = TINT_ALPHA;
    ctx.drawImage(mask, 0, 0);
    ctx.globalAlpha = 1;
    if (hover && !stroke && !gesture && tool !== "pan" && !finished) {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.beginPath();
      ctx.arc(hover.x, hover.y, Number(sizeInput.value) / 2, 0, 2 * Math.PI);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(0, 0, 0, 0.6)";
      ctx.stroke();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }

  // --- the mask -----------------------------------------------------------------------------------------------

  function drawSegment(op, from, to) {
    maskCtx.save();
    maskCtx.globalCompositeOperation = op.kind === "erase" ? "destination-out" : "source-over";
    maskCtx.fillStyle = TINT;
    maskCtx.strokeStyle = TINT;
    maskCtx.lineWidth = op.width;
    maskCtx.lineCap = "round";
    maskCtx.lineJoin = "round";
    maskCtx.beginPath();
    if (from.x === to.x && from.y === to.y) {
      maskCtx.arc(to.x, to.y, op.width / 2, 0, 2 * Math.PI);
      maskCtx.fill();
    } else {
      maskCtx.moveTo(from.x, from.y);
      maskCtx.lineTo(to.x, to.y);
      maskCtx.stroke();
    }
    maskCtx.restore();
  }

  function apply(op) {
    if (op.kind === "clear") {
      maskCtx.clearRect(0, 0, mask.width, mask.height);
    } else if (op.kind === "invert") {
      maskCtx.save();
      maskCtx.globalCompositeOperation = "xor"; // painted becomes clear and clear becomes painted
      maskCtx.fillStyle = TINT;
      maskCtx.fillRect(0, 0, mask.width, mask.height);
      maskCtx.restore();
    } else {
      drawSegment(op, op.points[0], op.points[0]);
      for (let i = 1; i < op.points.length; i += 1) drawSegment(op, op.points[i - 1], op.points[i]);
    }
  }

  function replay() {
    maskCtx.clearRect(0, 0, mask.width, mask.height);
    for (const op of ops) apply(op);
    updateControls();
    requestRender();
  }

  function record(op) {
    undone.length = 0;
    ops.push(op);
    apply(op);
    updateControls();
    requestRender();
  }

  function undo() {
    if (!ops.length || stroke) return;
    undone.push(ops.pop());
    replay();
  }

  function redo() {
    if (!undone.length || stroke) return;
    ops.push(undone.pop());
    replay();
  }

  function startStroke(event) {
    const erase = tool === "eraser" || (event.buttons & 32) !== 0; // 32: a pen's eraser end
    const point = toImage(local(event));
    stroke = { kind: erase ? "erase" : "paint", width: Number(sizeInput.value) / view.scale, points: [point],
      pointerId: event.pointerId };
    record(stroke);
  }

  function extendStroke(event) {
    const events = typeof event.getCoalescedEvents === "function" ? event.getCoalescedEvents() : [];
    for (const each of events.length ? events : [event]) {
      const point = toImage(local(each));
      const last = stroke.points[stroke.points.length - 1];
      if (point.x === last.x && point.y === last.y) continue;
      stroke.points.push(point);
      drawSegment(stroke, last, point);
    }
    requestRender();
  }

  function abandonStroke() {
    // a second finger means a pinch: the first finger's start of a stroke was not meant
    if (!stroke) return;
    ops.pop();
    stroke = null;
    replay();
  }

  // --- pointers -----------------------------------------------------------------------------------------------

  function centre() {
    let x = 0;
    let y = 0;
    for (const point of pointers.values()) {
      x += point.x;
      y += point.y;
    }
    return { x: x / pointers.size, y: y / pointers.size };
  }

  function spread() {
    if (pointers.size < 2) return 0;
    const [a, b] = pointers.values();
    return Math.hypot(a.x - b.x, a.y - b.y);
  }

  function startGesture() {
    gesture = pointers.size ? { anchor: toImage(centre()), spread: spread(), scale: view.scale } : null;
  }

  function moveGesture() {
    const middle = centre();
    const now = spread();
    if (gesture.spread > 0 && now > 0) view.scale = clampScale(gesture.scale * (now / gesture.spread));
    view.x = middle.x - gesture.anchor.x * view.scale;
    view.y = middle.y - gesture.anchor.y * view.scale;
    view.moved = true;
    requestRender();
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (!image || busy || finished) return;
    if (event.pointerType === "mouse" && event.button !== 0 && event.button !== 1) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    pointers.set(event.pointerId, local(event));
    if (pointers.size > 1 || gesture || tool === "pan" || event.button === 1) {
      abandonStroke();
      startGesture();
    } else {
      startStroke(event);
    }
  });

  canvas.addEventListener("pointermove", (event) => {
    if (!image) return;
    if (pointers.has(event.pointerId)) pointers.set(event.pointerId, local(event));
    hover = event.pointerType === "touch" ? null : local(event); // a finger has no outline to show
    if (gesture && pointers.has(event.pointerId)) {
      moveGesture();
    } else if (stroke && stroke.pointerId === event.pointerId) {
      extendStroke(event);
    } else {
      requestRender();
    }
  });

  function pointerEnds(event) {
    if (!pointers.delete(event.pointerId)) return;
    if (stroke && stroke.pointerId === event.pointerId) {
      stroke = null;
      updateControls();
    }
    if (gesture) startGesture(); // the pointers left go on moving the view from where they are
    requestRender();
  }

  canvas.addEventListener("pointerup", pointerEnds);
  canvas.addEventListener("pointercancel", pointerEnds);
  canvas.addEventListener("pointerleave", () => {
    hover = null;
    requestRender();
  });
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  canvas.addEventListener("wheel", (event) => {
    if (!image) return;
    event.preventDefault();
    const unit = event.deltaMode === 1 ? 16 : 1; // lines, not pixels
    zoomAt(local(event), Math.exp(-event.deltaY * unit * (event.ctrlKey ? 0.01 : 0.002)));
  }, { passive: false });

  // --- controls -----------------------------------------------------------------------------------------------

  $("brush").addEventListener("click", () => setTool("brush"));
  $("eraser").addEventListener("click", () => setTool("eraser"));
  $("pan").addEventListener("click", () => setTool("pan"));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", () => record({ kind: "clear" }));
  $("invert").addEventListener("click", () => record({ kind: "invert" }));
  $("zoom-in").addEventListener("click", () => zoomCentre(ZOOM_STEP));
  $("zoom-out").addEventListener("click", () => zoomCentre(1 / ZOOM_STEP));
  $("fit").addEventListener("click", fit);
  $("submit").addEventListener("click", submit);
  sizeInput.addEventListener("input", () => {
    $("size-value").textContent = sizeInput.value;
    requestRender();
  });
  document.addEventListener("keydown", (event) => {
    if (!image || busy || finished || event.target instanceof HTMLInputElement) return;
    const key = event.key.toLowerCase();
    if ((event.ctrlKey || event.metaKey) && key === "z") {
      event.preventDefault();
      if (event.shiftKey) redo(); else undo();
    } else if ((event.ctrlKey || event.metaKey) && key === "y") {
      event.preventDefault();
      redo();
    } else if (key === "b") {
      setTool("brush");
    } else if (key === "e") {
      setTool("eraser");
    } else if (key === "[" || key === "]") {
      sizeInput.value = String(Number(sizeInput.value) + (key === "]" ? 4 : -4));
      sizeInput.dispatchEvent(new Event("input"));
    }
  });

  // --- the server ---------------------------------------------------------------------------------------------

  async function answerOf(response) {
    try {
      const body = await response.json();
      return body.message || body.error || `The server answered ${response.status}.`;
    } catch (_) {
      return response.status === 413 ? "The mask is too large to send." : `The server answered ${response.status}.`;
    }
  }

  function maskPng() {
    // white where painted, black elsewhere, opaque, at the image's natural size
    const out = document.createElement("canvas");
    out.width = mask.width;
    out.height = mask.height;
    const c = out.getContext("2d");
    c.fillStyle = "#fff";
    c.fillRect(0, 0, out.width, out.height);
    c.globalCompositeOperation = "destination-in";
    c.drawImage(mask, 0, 0);
    c.globalCompositeOperation = "destination-over";
    c.fillStyle = "#000";
    c.fillRect(0, 0, out.width, out.height);
    return new Promise((resolve, reject) => {
      out.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("no PNG"))), "image/png");
    });
  }

  async function submit() {
    if (!image || busy || finished) return;
    if (!ops.length) {
      setStatus("Paint over the part to repaint first, then press Submit.", "error");
      return;
    }
    busy = true;
    updateControls();
    setStatus("Sending the mask…");
    let response;
    try {
      const body = await maskPng();
      response = await fetch(endpoint, { method: "POST", headers: { "Content-Type": "image/png" }, body,
        cache: "no-store", credentials: "same-origin" });
    } catch (_) {
      busy = false;
      updateControls();
      setStatus("The mask could not be sent: check your connection and press Submit again.", "error");
      return;
    }
    const answer = await answerOf(response);
    busy = false;
    // 403 and 410: this link can never take a mask; 409: an earlier Submit is still being answered
    finished = response.ok || response.status === 403 || response.status === 410;
    updateControls();
    setStatus(answer, response.ok ? "done" : "error");
    if (response.ok) window.paintSubmitted = true;
  }

  async function load() {
    let response;
    try {
      response = await fetch(`${endpoint}/image`, { cache: "no-store", credentials: "same-origin" });
    } catch (_) {
      setStatus("The image could not be loaded: check your connection and reload the page.", "error");
      return;
    }
    if (!response.ok) {
      finished = true;
      setStatus(await answerOf(response), "error");
      return;
    }
    try {
      image = await createImageBitmap(await response.blob()); // EXIF orientation applied, as the bot does
    } catch (_) {
      setStatus("This browser cannot show the image. Try another browser.", "error");
      return;
    }
    mask = document.createElement("canvas");
    mask.width = image.width;
    mask.height = image.height;
    maskCtx = mask.getContext("2d");
    resize();
    fit();
    updateControls();
    setStatus("Paint over what the bot should repaint, then press Submit.");
    render();
    window.paintReadyAt = performance.now(); // ms since navigation start: the bench's time to interactive
    window.paintReady = true;
  }

  // for tests and the bench: where an image pixel is on the screen, in CSS px of the viewport
  window.paintImageToClient = (x, y) => {
    const rect = canvas.getBoundingClientRect();
    return [rect.left + view.x + x * view.scale, rect.top + view.y + y * view.scale];
  };

  new ResizeObserver(resize).observe(stage);
  load();
})();
