// The camera page: send the camera over WebRTC, play the stylized video that comes back, change the
// prompt, strength, seed and smoothing live over a data channel (POST /sessions/{id}/params before it opens).
// A style image (models with an IP-Adapter), dropped or picked, is scaled to at most 512 px here and always
// sent by POST /sessions/{id}/params (too large for a data channel message); picked before Start, it is sent
// once the session exists.
// Camera and resolution can be changed while running (the sent track is replaced or re-constrained).
// ?token=T: the server set a cookie with it when it sent this page; every request here carries the cookie.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  // Read by the tests and handy in the console.
  const state = window.streamer = { sessionId: null, connectionState: "new", stats: null, lastReply: null,
                                    pc: null, channel: null, camera: null, style: null };
  const STYLE_SIDE = 512;  // CLIP looks at 224 px: larger only costs upload time
  const touched = new Set();  // controls the user changed: sent with the offer instead of the server's defaults
  const saved = { camera: "streamer.camera", resolution: "streamer.resolution", mirror: "streamer.mirror" };

  // The one place that knows how requests are authorised: the cookie the server set with the page carries
  // the token, so nothing is added here (the token never sits in script-readable state).
  function authHeaders() {
    return {};
  }

  function setStatus(text) { $("status").textContent = text; }
  function setError(text) { $("error").textContent = text || ""; }
  function remember(key, value) { try { localStorage.setItem(key, value); } catch (err) { /* private mode */ } }
  function recall(key) { try { return localStorage.getItem(key); } catch (err) { return null; } }

  function cameraMessage(err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError") {
      if ($("microphone").checked) {
        return "The camera or microphone was refused: allow them for this site (the camera icon in the address bar), or untick Microphone, then press Start again.";
      }
      return "The camera was refused: allow it for this site (the camera icon in the address bar), then press Start again.";
    }
    if (name === "NotFoundError") return "No camera found: connect one or start a virtual camera, then press Start again.";
    if (name === "OverconstrainedError") return "The chosen camera is not available any more: pick another one.";
    if (name === "NotReadableError") return "The camera is busy or failed to start: close other programs using it and try again.";
    return String((err && err.message) || err);
  }

  function insecureMessage() {
    return `The camera only works on a secure page: open this page over https:// (serve with --cert and --key) ` +
           `or as http://localhost:${location.port || 80}/ on this machine; ${location.origin} is neither.`;
  }

  function videoConstraints() {
    const [width, height] = $("resolution").value.split("x").map(Number);
    const id = $("camera").value;
    return { width: { ideal: width }, height: { ideal: height }, ...(id ? { deviceId: { exact: id } } : {}) };
  }

  async function refreshCameras() {
    const select = $("camera");
    const active = state.camera && state.camera.getVideoTracks()[0];
    const want = (active && active.getSettings().deviceId) || select.value || recall(saved.camera) || "";
    let cameras = [];
    try {
      cameras = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput" && d.deviceId);
    } catch (err) { /* no list: the default camera still works */ }
    const options = cameras.map((d, i) => new Option(d.label || `camera ${i + 1}`, d.deviceId));
    if (!options.length) options.push(new Option("default camera", ""));
    select.replaceChildren(...options);
    if (cameras.some((d) => d.deviceId === want)) select.value = want;
    select.dataset.previous = select.value;
  }

  function showSentSize() {
    const track = state.camera && state.camera.getVideoTracks()[0];
    const s = track ? track.getSettings() : null;
    $("sent-size").textContent = s && s.width ? `sending ${s.width} × ${s.height}` : "";
  }

  async function waitGathered(pc) {
    if (pc.iceGatheringState === "complete") return;
    await new Promise((resolve) => {
      const check = () => { if (pc.iceGatheringState === "complete") resolve(); };
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(resolve, 3000);  // send what was gathered so far rather than hang
    });
  }

  async function setParams(params) {
    const clean = Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined));
    if (state.channel && state.channel.readyState === "open") {
      state.channel.send(JSON.stringify({ type: "params", ...clean }));
      return;
    }
    if (!state.sessionId) return;  // not running: sent with the next offer
    const response = await fetch(`/sessions/${state.sessionId}/params`, {
      method: "POST", body: JSON.stringify(clean), headers: { ...authHeaders(), "Content-Type": "application/json" } });
    const json = (response.headers.get("Content-Type") || "").startsWith("application/json");
    const reply = json ? await response.json() : { ok: false, error: await response.text() };  // {ok, params|error}
    state.lastReply = reply;
    setError(reply.ok ? "" : reply.error);
  }
  state.setParams = setParams;

  // Always over HTTP: a picture is far larger than a data channel message should be.
  async function postParams(params) {
    const response = await fetch(`/sessions/${state.sessionId}/params`, {
      method: "POST", body: JSON.stringify(params), headers: { ...authHeaders(), "Content-Type": "application/json" } });
    const json = (response.headers.get("Content-Type") || "").startsWith("application/json");
    const reply = json ? await response.json() : { ok: false, error: await response.text() };
    state.lastReply = reply;
    setError(reply.ok ? "" : reply.error);
    return reply;
  }

  async function styleDataUrl(file) {
    if (!file.type.startsWith("image/")) throw new Error(`${file.name} is not a picture (${file.type || "unknown type"})`);
    let bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch (err) {
      throw new Error(`${file.name} could not be read as a picture`);
    }
    const k = Math.min(1, STYLE_SIDE / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(16, Math.round(bitmap.width * k));
    canvas.height = Math.max(16, Math.round(bitmap.height * k));
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    return canvas.toDataURL("image/jpeg", 0.92);
  }

  async function setStyle(file) {
    setError("");
    try {
      const url = file ? await styleDataUrl(file) : "";
      state.style = url;
      $("style-preview").src = url;
      $("style-preview").hidden = !url;
      $("style-name").textContent = file ? file.name : "Drop a picture here for its style, or";
      $("style-clear").disabled = !url;
      if (state.sessionId) await postParams({ style_image: url });
    } catch (err) {
      setError(String(err.message || err));
    }
  }
  state.setStyle = setStyle;

  function showStyleControls(defaults) {
    if (defaults.style_scale === undefined) return;  // the model has no IP-Adapter
    $("style-row").hidden = false;
    if (!touched.has("style_scale")) {
      $("style-scale").value = defaults.style_scale;
      $("style-scale-value").textContent = defaults.style_scale;
    }
  }

  function controlValues() {
    return { prompt: $("prompt").value || undefined, strength: Number($("strength").value),
             seed: Number($("seed").value), smoothing: $("smoothing").checked,
             style_scale: Number($("style-scale").value) };
  }

  async function start() {
    setError("");
    if (!window.isSecureContext || !navigator.mediaDevices) { setError(insecureMessage()); return; }
    $("start").disabled = true;
    try {
      setStatus("asking for the camera");
      let camera;
      try {
        camera = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(), audio: $("microphone").checked });
      } catch (err) {
        throw new Error(cameraMessage(err));
      }
      state.camera = camera;
      $("local").srcObject = camera;
      await refreshCameras();
      showSentSize();
      const config = await (await fetch("/config", { headers: authHeaders() })).json();
      showDefaults(config.defaults || {});
      const pc = state.pc = new RTCPeerConnection({ iceServers: config.iceServers });
      camera.getTracks().forEach((track) => pc.addTrack(track, camera));  // the microphone too, when chosen
      const channel = state.channel = pc.createDataChannel("control");
      channel.onmessage = (event) => {
        const message = JSON.parse(event.data);
        if (message.type === "stats") {
          state.stats = message;
          $("numbers").hidden = false;
          $("fps").textContent = message.fps.toFixed(1);
          $("latency").textContent = message.latency_ms.toFixed(0);
        } else if (message.type === "params") {
          state.lastReply = message;
          setError(message.ok ? "" : message.error);
        }
      };
      pc.ontrack = (event) => {  // the stylized video and (microphone on) the sound, delayed as the video is
        const remote = $("remote");
        const stream = event.streams[0];
        if (stream) { if (remote.srcObject !== stream) remote.srcObject = stream; }
        else if (remote.srcObject) remote.srcObject.addTrack(event.track);
        else remote.srcObject = new MediaStream([event.track]);
        if (event.track.kind === "audio") remote.muted = false;  // Start was a click: sound may play
      };
      pc.onconnectionstatechange = () => {
        state.connectionState = pc.connectionState;
        setStatus(pc.connectionState === "connected" ? "running" : pc.connectionState);
        if (pc.connectionState === "failed") { stop(); setError("The connection failed (network or server gone)."); }
      };
      setStatus("connecting");
      await pc.setLocalDescription(await pc.createOffer());
      await waitGathered(pc);
      const values = controlValues();
      const params = Object.fromEntries([...touched].filter((k) => values[k] !== undefined).map((k) => [k, values[k]]));
      const response = await fetch("/offer", {
        method: "POST", headers: { ...authHeaders(), "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer",
                               ...(Object.keys(params).length ? { params } : {}) }) });
      if (!response.ok) throw new Error(`${response.status}: ${await response.text()}`);
      const answer = await response.json();
      state.sessionId = answer.session_id;
      await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
      if (state.style) await postParams({ style_image: state.style });  // picked before Start
      $("stop").disabled = false;
      pollReceivedFps();
    } catch (err) {
      stop();
      setError(String(err.message || err));
    }
  }

  function showDefaults(defaults) {
    if (defaults.prompt !== undefined && !touched.has("prompt") && !$("prompt").value) $("prompt").value = defaults.prompt;
    if (defaults.strength !== undefined && !touched.has("strength")) {
      $("strength").value = defaults.strength;
      $("strength-value").textContent = defaults.strength;
    }
    if (defaults.seed !== undefined && !touched.has("seed")) $("seed").value = defaults.seed;
    if (defaults.smoothing !== undefined && !touched.has("smoothing")) $("smoothing").checked = defaults.smoothing;
    showStyleControls(defaults);
  }

  async function pollReceivedFps() {
    const pc = state.pc;
    let last = null;
    while (pc && state.pc === pc && pc.connectionState !== "closed") {
      await new Promise((r) => setTimeout(r, 1000));
      const report = await pc.getStats();
      report.forEach((entry) => {
        if (entry.type === "inbound-rtp" && entry.kind === "video") {
          if (last) {
            const fps = (entry.framesDecoded - last.framesDecoded) / ((entry.timestamp - last.timestamp) / 1000);
            $("recv-fps").textContent = fps.toFixed(1);
          }
          last = entry;
        }
      });
    }
  }

  function stop() {
    const pc = state.pc;
    const id = state.sessionId;
    state.pc = null; state.channel = null; state.sessionId = null;
    if (pc) pc.close();
    if (state.camera) state.camera.getTracks().forEach((track) => track.stop());
    state.camera = null;
    if (id) fetch(`/sessions/${id}`, { method: "DELETE", headers: authHeaders() }).catch(() => {});
    $("start").disabled = !window.isSecureContext;
    $("stop").disabled = true;
    $("numbers").hidden = true;
    ["fps", "latency", "recv-fps"].forEach((n) => { $(n).textContent = "-"; });
    $("sent-size").textContent = "";
    setStatus("not running");
  }

  // Camera or resolution changed: takes effect at once when running, else at the next Start. A change the
  // browser refuses leaves the running camera and the pickers as they were.
  async function changeCamera(select, previous) {
    remember(saved[select.id], select.value);
    if (!state.camera) return;
    const old = state.camera;
    try {
      if (select.id === "resolution") {
        const { width, height } = videoConstraints();
        await old.getVideoTracks()[0].applyConstraints({ width, height });
      } else {
        const camera = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(), audio: false });
        const sender = state.pc && state.pc.getSenders().find((s) => s.track && s.track.kind === "video");
        if (sender) await sender.replaceTrack(camera.getVideoTracks()[0]);
        old.getVideoTracks().forEach((track) => track.stop());  // the microphone, if sent, goes on
        old.getAudioTracks().forEach((track) => camera.addTrack(track));
        state.camera = camera;
        $("local").srcObject = camera;
      }
      setError("");
    } catch (err) {
      select.value = previous;
      remember(saved[select.id], previous);
      setError(cameraMessage(err));
    }
    showSentSize();
  }

  function setMirror(on) {
    $("mirror").checked = on;
    $("videos").classList.toggle("mirrored", on);
    remember(saved.mirror, on ? "1" : "0");
  }

  function setFullWindow(on) {
    const output = $("output");
    output.classList.toggle("full-window", on);  // the fallback where the Fullscreen API is refused
    $("fullwindow").setAttribute("aria-pressed", String(on));
    if (on && !document.fullscreenElement && output.requestFullscreen) output.requestFullscreen().catch(() => {});
    if (!on && document.fullscreenElement) document.exitFullscreen().catch(() => {});
  }

  function applyPrompt() {
    touched.add("prompt");
    setParams({ prompt: $("prompt").value });
  }

  for (const select of [$("camera"), $("resolution")]) {  // dataset.previous: the value in use
    select.dataset.previous = select.value;
    select.addEventListener("change", async () => {
      await changeCamera(select, select.dataset.previous);
      select.dataset.previous = select.value;
    });
  }
  $("start").onclick = start;
  $("stop").onclick = stop;
  $("apply").onclick = applyPrompt;
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter") applyPrompt(); });
  document.querySelectorAll("#examples .example").forEach((button) => {
    button.onclick = () => { $("prompt").value = button.textContent.trim(); applyPrompt(); };
  });
  $("strength").oninput = () => {
    touched.add("strength");
    $("strength-value").textContent = $("strength").value;
    setParams({ strength: Number($("strength").value) });
  };
  $("seed").onchange = () => { touched.add("seed"); setParams({ seed: Number($("seed").value) }); };
  $("smoothing").onchange = () => { touched.add("smoothing"); setParams({ smoothing: $("smoothing").checked }); };
  $("style-scale").oninput = () => {
    touched.add("style_scale");
    $("style-scale-value").textContent = $("style-scale").value;
    setParams({ style_scale: Number($("style-scale").value) });
  };
  $("style-file").onchange = () => { const file = $("style-file").files[0]; if (file) setStyle(file); };
  $("style-clear").onclick = () => { $("style-file").value = ""; setStyle(null); };
  const drop = $("style-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) setStyle(file);
  });
  $("mirror").onchange = () => setMirror($("mirror").checked);
  $("fullwindow").onclick = () => setFullWindow(!$("output").classList.contains("full-window"));
  document.addEventListener("fullscreenchange", () => { if (!document.fullscreenElement) setFullWindow(false); });
  document.addEventListener("keydown", (e) => {
    const typing = e.target.matches && e.target.matches("input[type=text], input[type=number], textarea, select");
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "f") { e.preventDefault(); setFullWindow(!$("output").classList.contains("full-window")); }
    else if (e.key === "m") { e.preventDefault(); setMirror(!$("mirror").checked); }
    else if (e.key === "Escape" && $("output").classList.contains("full-window")) setFullWindow(false);
  });
  window.addEventListener("pagehide", stop);
  if (navigator.mediaDevices) navigator.mediaDevices.addEventListener("devicechange", refreshCameras);

  const savedResolution = recall(saved.resolution);
  if ([...$("resolution").options].some((o) => o.value === savedResolution)) {
    $("resolution").value = $("resolution").dataset.previous = savedResolution;
  }
  setMirror(recall(saved.mirror) === "1");
  if (!window.isSecureContext || !navigator.mediaDevices) {
    setError(insecureMessage());
    $("start").disabled = true;
  } else {
    refreshCameras();
  }
  // Style controls only where the model has an IP-Adapter (the server's defaults then carry style_scale).
  fetch("/config", { headers: authHeaders() }).then((r) => r.json())
    .then((config) => showStyleControls(config.defaults || {})).catch(() => {});
})();
