// The camera page: send the camera over WebRTC, play the stylized video that comes back, change the
// prompt, strength, seed and smoothing live over a data channel (POST /sessions/{id}/params before it opens).
// ?token=T: the server set a cookie with it when it sent this page; every request here carries the cookie.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const headers = {};
  // Read by the tests and handy in the console.
  const state = window.streamer = { sessionId: null, connectionState: "new", stats: null, lastReply: null,
                                    pc: null, channel: null };

  function setStatus(text) { $("status").textContent = text; }
  function setError(text) { $("error").textContent = text || ""; }

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
    if (!state.sessionId) return;
    const response = await fetch(`/sessions/${state.sessionId}/params`, {
      method: "POST", body: JSON.stringify(clean), headers: { ...headers, "Content-Type": "application/json" } });
    const json = (response.headers.get("Content-Type") || "").startsWith("application/json");
    const reply = json ? await response.json() : { ok: false, error: await response.text() };  // {ok, params|error}
    state.lastReply = reply;
    setError(reply.ok ? "" : reply.error);
  }
  state.setParams = setParams;

  async function start() {
    setError("");
    $("start").disabled = true;
    try {
      setStatus("asking for the camera");
      const camera = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
      $("local").srcObject = camera;
      const config = await (await fetch("/config", { headers })).json();
      showDefaults(config.defaults || {});
      const pc = state.pc = new RTCPeerConnection({ iceServers: config.iceServers });
      camera.getVideoTracks().forEach((track) => pc.addTrack(track, camera));
      const channel = state.channel = pc.createDataChannel("control");
      channel.onmessage = (event) => {
        const message = JSON.parse(event.data);
        if (message.type === "stats") {
          state.stats = message;
          $("fps").textContent = message.fps.toFixed(1);
          $("latency").textContent = message.latency_ms.toFixed(0);
        } else if (message.type === "params") {
          state.lastReply = message;
          setError(message.ok ? "" : message.error);
        }
      };
      pc.ontrack = (event) => { $("remote").srcObject = event.streams[0] || new MediaStream([event.track]); };
      pc.onconnectionstatechange = () => {
        state.connectionState = pc.connectionState;
        setStatus(pc.connectionState);
        if (pc.connectionState === "failed") stop();
      };
      setStatus("connecting");
      await pc.setLocalDescription(await pc.createOffer());
      await waitGathered(pc);
      const response = await fetch("/offer", {
        method: "POST", headers: { ...headers, "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }) });
      if (!response.ok) throw new Error(`${response.status}: ${await response.text()}`);
      const answer = await response.json();
      state.sessionId = answer.session_id;
      await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
      $("stop").disabled = false;
      pollReceivedFps();
    } catch (err) {
      setError(String(err.message || err));
      setStatus("stopped");
      $("start").disabled = false;
      stop();
    }
  }

  function showDefaults(defaults) {
    if (defaults.prompt !== undefined && !$("prompt").value) $("prompt").value = defaults.prompt;
    if (defaults.strength !== undefined) {
      $("strength").value = defaults.strength;
      $("strength-value").textContent = defaults.strength;
    }
    if (defaults.seed !== undefined) $("seed").value = defaults.seed;
    if (defaults.smoothing !== undefined) $("smoothing").checked = defaults.smoothing;
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
    if (pc) {
      pc.getSenders().forEach((sender) => sender.track && sender.track.stop());
      pc.close();
    }
    if (id) fetch(`/sessions/${id}`, { method: "DELETE", headers }).catch(() => {});
    $("start").disabled = false;
    $("stop").disabled = true;
    setStatus("stopped");
  }

  $("start").onclick = start;
  $("stop").onclick = stop;
  $("apply").onclick = () => setParams({ prompt: $("prompt").value });
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter") setParams({ prompt: $("prompt").value }); });
  $("strength").oninput = () => { $("strength-value").textContent = $("strength").value; setParams({ strength: Number($("strength").value) }); };
  $("seed").onchange = () => setParams({ seed: Number($("seed").value) });
  $("smoothing").onchange = () => setParams({ smoothing: $("smoothing").checked });
  window.addEventListener("pagehide", stop);
})();
