// Peer Stream web client: protocol v1 (see PROTOCOL.md) over one WebSocket at /ws,
// WebRTC with H.264 (constrained baseline, packetization-mode 1) + Opus, trickle ICE.
// Plain JavaScript, no build step, no dependencies: standard browser APIs only.
//
// Automation (tests, demos): ?autostart=1&interests=a,b&say=hello&echo=1
//   autostart  start searching as soon as the camera question is settled
//   interests  prefill the interests field
//   say        greet every stranger with this line
//   echo       answer every stranger line with "echo: <line>" (never echoing an echo)
// A read-only view of the state is at window.peerStream (state, matchId, role, chat,
// system, counts, videoHidden, undoLeft, setupMs, stats(), setup, serviceBusy,
// busyRetries).
//
// Kinder chat (issue 12): the stranger's video stays blurred until "Show video" (unless
// "Always show video" is set); Undo (Alt+U) for 5 s after Next; "Check my setup";
// live counts (hello with counts: true); block ("Don't match me with this person
// again") and "Mute chat".
'use strict';

(() => {
  const PROTOCOL_VERSION = 1;
  const CLIENT_NAME = 'peer-stream-web/0.1.0';
  const ECHO_PREFIX = 'echo: ';
  const MAX_CHAT_CHARS = 2000;
  const MAX_REASON_CHARS = 500;
  const MAX_INTERESTS = 10;
  const MAX_INTEREST_CHARS = 32;
  const NEXT_CONFIRM_MS = 3000;
  const TYPING_IDLE_MS = 3000;
  const STRANGER_TYPING_MAX_MS = 15000;
  const RETRY_MAX_MS = 15000;
  // A cluster node that cannot reach its Redis answers `join`/`next` with `unavailable`
  // and keeps us idle (PROTOCOL.md): say so and send `join` again after 1 s, 2 s, 4 s …
  // up to 15 s, each ±25 % so that everyone turned away at once does not return in step.
  const SERVICE_BUSY_TEXT = 'Service busy — retrying';
  const BUSY_RETRY_FIRST_MS = 1000;
  const BUSY_RETRY_MAX_MS = 15000;
  // A call whose media path never comes up, or is lost and not back within this long,
  // is given up: `next` with reason connection_failed (PROTOCOL.md), and on to someone new.
  const CONNECT_TIMEOUT_MS = 10000;
  const PEER_GIVE_UP_MS = 10000;
  // Browsers call a path `disconnected` only after ~5 s of silence (not configurable);
  // the desktop app notices in 2.5 s. So a call that was receiving media and hears no
  // RTP packet for this long counts as lost too (a partner sends audio all the time,
  // also muted: silence frames), checked every PATH_WATCH_MS.
  const PEER_SILENT_MS = 2000;
  const PATH_WATCH_MS = 500;
  const UNDO_WINDOW_MS = 5000;
  const SETUP_TIMEOUT_MS = 8000;
  const ALWAYS_SHOW_KEY = 'peer-stream.alwaysShowVideo';

  const $ = (id) => document.getElementById(id);
  const el = {
    body: document.body,
    online: $('online'),
    banner: $('banner'),
    bannerText: $('banner-text'),
    bannerRetry: $('banner-retry'),
    remoteVideo: $('remote-video'),
    spinner: $('spinner'),
    remoteStatus: $('remote-status'),
    unmute: $('unmute'),
    localVideo: $('local-video'),
    localOff: $('local-off'),
    home: $('home'),
    interests: $('interests'),
    mediaNote: $('media-note'),
    mediaNoteText: $('media-note-text'),
    mediaRetry: $('media-retry'),
    start: $('start'),
    chat: $('chat'),
    log: $('log'),
    typing: $('typing'),
    compose: $('compose'),
    message: $('message'),
    send: $('send'),
    controls: $('controls'),
    next: $('next'),
    nextLabel: $('next-label'),
    stop: $('stop'),
    report: $('report'),
    reportDialog: $('report-dialog'),
    reportForm: $('report-form'),
    reportDetails: $('report-details'),
    reportCancel: $('report-cancel'),
    reportBlock: $('report-block'),
    remoteBox: $('remote-box'),
    revealBox: $('reveal-box'),
    reveal: $('reveal'),
    alwaysShow: $('always-show'),
    homeCounts: $('home-counts'),
    undo: $('undo'),
    undoLabel: $('undo-label'),
    muteChat: $('mute-chat'),
    block: $('block'),
    setupOpen: $('setup-open'),
    setup: $('setup'),
    setupServer: $('setup-server'),
    setupCamera: $('setup-camera'),
    setupMic: $('setup-mic'),
    setupSpeaker: $('setup-speaker'),
    setupNetwork: $('setup-network'),
    setupPreview: $('setup-preview'),
    setupLevel: $('setup-level'),
    setupTone: $('setup-tone'),
    setupVerdict: $('setup-verdict'),
    setupDetail: $('setup-detail'),
    setupAgain: $('setup-again'),
    setupClose: $('setup-close'),
  };

  function loadAlwaysShow() {
    try {
      return localStorage.getItem(ALWAYS_SHOW_KEY) === '1';
    } catch {
      return false;
    }
  }

  function saveAlwaysShow(on) {
    try {
      localStorage.setItem(ALWAYS_SHOW_KEY, on ? '1' : '0');
    } catch {
      /* private mode: the setting lasts for this page only */
    }
  }

  const params = new URLSearchParams(location.search);
  const auto = {
    start: params.get('autostart') === '1',
    interests: params.get('interests') || '',
    say: params.get('say') || '',
    echo: params.get('echo') === '1',
  };

  const s = {
    // idle: home screen · searching: in the queue · chatting: matched · ended: the
    // stranger left (New stranger / Stop)
    phase: 'idle',
    ws: null,
    welcomed: false,
    sessionId: null,
    online: null,
    waiting: null,
    queued: false,
    wantSearch: false,
    interests: [],
    matchId: null,
    lastMatchId: null,
    role: null,
    commonInterests: [],
    iceServers: [],
    pc: null,
    connectTimer: null,
    callFailed: false,
    // Resuming (PROTOCOL.md "Resuming a session"): the token from the last welcome, and
    // whether the socket dropped with a call or search that a resume may keep.
    resumeToken: null,
    awaitingResume: false,
    // The answer rejected video (no codec in common): an audio-only call.
    videoUnavailable: false,
    // The path to the stranger was lost (ICE disconnected) and may come back.
    peerLost: false,
    peerLostTimer: null,
    // The call's one relay-only retry before giving up (see retryThroughRelay): started,
    // and the timer that ends it.
    relayRetry: false,
    relayRetryTimer: null,
    // Inbound RTP packets at the last change, and when (the silence watch).
    pathWatch: null,
    heard: { packets: 0, at: 0 },
    remoteStream: null,
    pendingCandidates: [],
    signalChain: Promise.resolve(),
    localStream: null,
    mediaProblem: null,
    mediaReady: Promise.resolve(null),
    chat: [],
    system: [],
    nextArmedUntil: 0,
    nextTimer: null,
    typingSent: false,
    typingTimer: null,
    strangerTypingTimer: null,
    retryTimer: null,
    retryDelay: 1000,
    // Service busy: a `join`/`next` awaits its answer (queued, matched or unavailable);
    // the server turned us away (`unavailable`) and a re-sent join is due; how many
    // `unavailable`s in a row (the backoff); joins re-sent in all (for tests).
    joinPending: false,
    serviceBusy: false,
    busyTimer: null,
    busyAttempts: 0,
    busyRetries: 0,
    fatal: null,
    noticeTimer: null,
    // Live counts (from `counts` messages; null until the first one).
    counts: null,
    // Blur until revealed.
    alwaysShow: loadAlwaysShow(),
    revealed: false,
    // Undo an accidental Next: allowed until this time (ms since epoch).
    undoUntil: 0,
    undoTicker: null,
    undoPending: false,
    // Block and mute.
    chatMuted: false,
    blocked: new Set(),
    // Call setup of the current match (matched → first remote frame, ms).
    matchedAt: null,
    setupMs: null,
    // The match whose call_report went out (one per match).
    reportedMatch: null,
    // Check my setup.
    iceWaiters: [],
    setup: null,
    setupRun: 0,
    meterStop: null,
    audioCtx: null,
  };

  // ---------------------------------------------------------------- server link

  function serverUrl() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    return `${scheme}://${location.host}/ws`;
  }

  function connect() {
    clearTimeout(s.retryTimer);
    s.retryTimer = null;
    if (s.fatal === 'banned') return;
    if (s.ws && (s.ws.readyState === WebSocket.CONNECTING || s.ws.readyState === WebSocket.OPEN)) {
      return;
    }
    let ws;
    try {
      ws = new WebSocket(serverUrl());
    } catch (e) {
      showBanner(`Can't open a connection to the server (${e.message}).`, { retry: true });
      return;
    }
    s.ws = ws;
    s.welcomed = false;
    render();
    ws.onopen = () => {
      if (ws !== s.ws) return;
      const hello = { type: 'hello', version: PROTOCOL_VERSION, client: CLIENT_NAME, counts: true };
      if (s.awaitingResume && s.resumeToken) hello.resume = s.resumeToken;
      send(hello);
    };
    ws.onmessage = (ev) => {
      if (ws !== s.ws || typeof ev.data !== 'string') return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        console.warn('peer-stream: unreadable frame from the server');
        return;
      }
      if (msg && typeof msg === 'object' && typeof msg.type === 'string') onServer(msg);
    };
    ws.onclose = (ev) => {
      if (ws !== s.ws) return;
      s.ws = null;
      onSocketClosed(ev);
    };
  }

  function send(msg) {
    if (!s.ws || s.ws.readyState !== WebSocket.OPEN) return false;
    s.ws.send(JSON.stringify(msg));
    return true;
  }

  function sendSignal(payload) {
    if (s.matchId) send({ type: 'signal', match_id: s.matchId, payload });
  }

  function onSocketClosed(ev) {
    const wasWelcomed = s.welcomed;
    s.welcomed = false;
    s.queued = false;
    // Nothing can be re-sent without a socket; the next welcome joins again (below).
    clearTimeout(s.busyTimer);
    s.busyTimer = null;
    s.joinPending = false;
    // Media flows peer to peer: a call (or a place in the queue) outlives the signaling
    // connection if we come back within the server's resume window. A close the server
    // meant (restart 1001/1012 aside, a ban or a protocol error) ends it as before.
    const resumable =
      wasWelcomed && s.resumeToken && !s.fatal && ![1000, 1008, 1009].includes(ev.code);
    if (resumable && (s.phase === 'chatting' || s.phase === 'searching')) {
      if (!s.awaitingResume && s.phase === 'chatting') {
        system('Lost the connection to the server — reconnecting; the call goes on.');
      }
      s.awaitingResume = true;
    } else if (s.phase === 'chatting') {
      endCall();
      system('Lost the connection to the server.');
      setPhase('ended');
    }
    render();
    if (s.fatal) return; // banned or wrong version: the banner says what to do
    let text;
    if (ev.code === 1001) {
      text = 'The server is restarting. Reconnecting…';
    } else if (ev.code === 1008) {
      text = `The server closed the connection${ev.reason ? ` (${ev.reason})` : ''}. Retrying…`;
    } else if (wasWelcomed) {
      text = 'Lost the connection to the server. Reconnecting…';
    } else {
      text = "Can't reach the Peer Stream server. Check your connection; retrying…";
    }
    showBanner(text, { retry: true });
    s.retryTimer = setTimeout(connect, s.retryDelay);
    s.retryDelay = Math.min(s.retryDelay * 2, RETRY_MAX_MS);
  }

  function onServer(msg) {
    switch (msg.type) {
      case 'welcome':
        s.welcomed = true;
        s.resumeToken = typeof msg.resume_token === 'string' ? msg.resume_token : null;
        const resumed = s.awaitingResume && msg.resumed === true;
        // A resumed session that the server held idle (service busy) was never queued.
        const wasBusy = s.serviceBusy;
        serviceAvailable();
        if (s.awaitingResume) {
          s.awaitingResume = false;
          if (resumed) {
            // Same session, same match or queue place; the partner never noticed.
            if (s.phase === 'searching' && !wasBusy) s.queued = true;
            if (s.phase === 'chatting') system('Reconnected to the server.');
          } else if (s.phase === 'chatting') {
            // Too late (the window passed, or the server restarted): the match is gone.
            endCall();
            system('Lost the connection to the server.');
            setPhase('ended');
          }
        }
        s.sessionId = msg.session_id;
        s.online = typeof msg.online === 'number' ? msg.online : null;
        s.retryDelay = 1000;
        if (!s.fatal) hideBanner();
        // A resumed session is back in its old queue place: no second join.
        if ((!resumed || wasBusy) && s.wantSearch && s.phase === 'searching') sendJoin();
        render();
        break;
      case 'queued':
        serviceAvailable();
        s.waiting = typeof msg.waiting === 'number' ? msg.waiting : null;
        // `online` only comes with welcome; what we see since then is a lower bound.
        if (s.online !== null && s.waiting !== null) s.online = Math.max(s.online, s.waiting);
        if (s.wantSearch && s.phase === 'searching') s.queued = true;
        if (s.phase === 'ended' && !s.fatal) {
          // The server put us back in the queue itself (our partner undid a Next that
          // had paired them with us): we are looking for someone new again.
          s.wantSearch = true;
          s.queued = true;
          system('Looking for someone new…');
          setPhase('searching');
        }
        render();
        break;
      case 'matched':
        serviceAvailable();
        onMatched(msg);
        break;
      case 'signal':
        if (msg.match_id === s.matchId && s.pc) queueSignal(s.pc, msg.payload);
        break;
      case 'chat':
        if (msg.match_id === s.matchId && typeof msg.text === 'string') onStrangerChat(msg.text);
        break;
      case 'typing':
        if (msg.match_id === s.matchId) showStrangerTyping(msg.active === true);
        break;
      case 'partner_left':
        if (msg.match_id === s.matchId) onPartnerLeft(msg.reason);
        break;
      case 'counts':
        if (typeof msg.online === 'number' && typeof msg.waiting === 'number') {
          s.counts = { online: msg.online, waiting: msg.waiting };
          s.online = msg.online;
          render();
        }
        break;
      case 'ice_servers': {
        const waiters = s.iceWaiters;
        s.iceWaiters = [];
        const list = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
        for (const w of waiters) w(list);
        break;
      }
      case 'error':
        onServerError(String(msg.code || ''), String(msg.message || ''));
        break;
      default:
        break; // unknown messages are ignored (PROTOCOL.md)
    }
  }

  function onServerError(code, message) {
    switch (code) {
      case 'banned':
        s.fatal = 'banned';
        s.wantSearch = false;
        if (s.phase === 'chatting') endCall();
        setPhase('idle');
        showBanner(
          'You have been banned from this server because several people reported you. ' +
            'Bans are temporary; try again later.',
          { retry: false },
        );
        break;
      case 'version_unsupported':
        s.fatal = 'version';
        s.wantSearch = false;
        setPhase('idle');
        showBanner(
          'This page is out of date for the server it talks to. Reload the page to get the current version.',
          { retry: true, reload: true },
        );
        break;
      case 'rate_limited':
        showNotice('You are going a little fast. Wait a moment and try again.');
        break;
      case 'too_large':
        showNotice('That was too long to send.');
        break;
      case 'not_in_match':
        break; // a message crossed the end of a match: harmless
      case 'unavailable':
        if (s.phase === 'chatting') {
          // A relay to a stranger on another node that cannot be reached right now.
          const text = message || 'not delivered: the service is busy';
          showNotice(`${text.charAt(0).toUpperCase()}${text.slice(1)}.`);
        } else if (s.joinPending && s.wantSearch && s.phase === 'searching') {
          // The answer to our join/next: the server holds us idle.
          s.joinPending = false;
          serviceBusy();
        }
        // Otherwise a relay that crossed the end of its match, Stop, or a second answer
        // while a retry is already due: nothing to do.
        break;
      case 'undo_unavailable':
        s.undoPending = false;
        showNotice(`Can't bring the last stranger back: ${message || 'too late'}.`, 'info');
        if (s.phase === 'chatting') system(`Undo didn't work: ${message || 'too late'}.`);
        break;
      default:
        console.warn(`peer-stream: the server refused a message (${code}): ${message}`);
        if (code !== 'invalid') showNotice(`The server refused that: ${message || code}`);
        break;
    }
  }

  // ---------------------------------------------------------------- the flow

  function parseInterests(text) {
    const seen = new Set();
    const out = [];
    for (const part of text.split(',')) {
      const item = Array.from(part.trim().toLowerCase()).slice(0, MAX_INTEREST_CHARS).join('').trim();
      if (item && !seen.has(item) && out.length < MAX_INTERESTS) {
        seen.add(item);
        out.push(item);
      }
    }
    return out;
  }

  function startSearching() {
    if (s.fatal) return;
    if (!el.setup.hidden) closeSetup();
    s.interests = parseInterests(el.interests.value);
    s.wantSearch = true;
    s.queued = false;
    clearLog();
    setPhase('searching');
    if (s.welcomed) sendJoin();
    else connect();
  }

  function sendJoin() {
    sendQueueRequest({ type: 'join', interests: s.interests });
  }

  /// `join` or `next` (answered by queued, matched or unavailable); replaces a re-sent
  /// join that is still due.
  function sendQueueRequest(msg) {
    clearTimeout(s.busyTimer);
    s.busyTimer = null;
    if (send(msg)) s.joinPending = true;
  }

  /// `unavailable` answered our join/next: say so (once per spell) and join again after
  /// the next, longer wait.
  function serviceBusy() {
    s.busyAttempts += 1;
    if (!s.serviceBusy) {
      s.serviceBusy = true;
      system(SERVICE_BUSY_TEXT);
    }
    const base = Math.min(BUSY_RETRY_FIRST_MS * 2 ** Math.min(s.busyAttempts - 1, 16), BUSY_RETRY_MAX_MS);
    clearTimeout(s.busyTimer);
    s.busyTimer = setTimeout(retryJoin, base * (0.75 + 0.5 * Math.random()));
    render();
  }

  function retryJoin() {
    s.busyTimer = null;
    if (!s.serviceBusy || !s.wantSearch || s.phase !== 'searching' || !s.welcomed) return;
    s.busyRetries += 1;
    sendJoin();
  }

  /// Queued, matched, stopped or a new connection: no retry due, the backoff starts over.
  function serviceAvailable() {
    clearTimeout(s.busyTimer);
    s.busyTimer = null;
    s.joinPending = false;
    s.busyAttempts = 0;
    if (s.serviceBusy) {
      s.serviceBusy = false;
      render();
    }
  }

  function onMatched(msg) {
    if (s.phase === 'chatting') endCall();
    const resumed = msg.resumed === true;
    const mine = s.undoPending;
    s.undoPending = false;
    if (resumed) clearUndo();
    s.matchId = String(msg.match_id);
    s.role = msg.role === 'offerer' ? 'offerer' : 'answerer';
    s.matchedAt = performance.now();
    s.setupMs = null;
    s.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
    s.commonInterests = Array.isArray(msg.common_interests) ? msg.common_interests.map(String) : [];
    s.queued = false;
    if (s.online !== null) s.online = Math.max(s.online, 2);
    s.revealed = s.alwaysShow;
    s.chatMuted = false;
    clearLog();
    setPhase('chatting');
    if (resumed) system(mine ? "You're back with the previous stranger." : 'Stranger came back.');
    else system("You're now chatting with a random stranger. Say hi!");
    if (!s.revealed) system('Video hidden until you show it.');
    if (s.commonInterests.length) system(`You both like: ${s.commonInterests.join(', ')}.`);
    if (!localTrack('video')) system("Your camera is off: the stranger can't see you.");
    try {
      startCall();
    } catch (e) {
      console.error('peer-stream: cannot start the call', e);
      system("Video could not start in this browser. You can still chat by text.");
    }
    if (auto.say) sendChat(auto.say);
    if (!auto.start && window.matchMedia('(pointer: fine)').matches) el.message.focus();
  }

  function onPartnerLeft(reason) {
    endCall();
    setPhase('ended');
    system(
      reason === 'skipped'
        ? 'Stranger skipped to someone new.'
        : 'Stranger has disconnected.',
    );
  }

  /// Next: skip at once (after the confirming second press, see pressNext). A plain
  /// Next (not the one after a report) can be undone for 5 s.
  function skip({ undoable = true } = {}) {
    if (s.phase !== 'chatting') return;
    sendQueueRequest({ type: 'next' });
    endCall();
    s.queued = false;
    clearLog();
    if (undoable) armUndo();
    else clearUndo();
    setPhase('searching');
  }

  function armUndo() {
    s.undoUntil = Date.now() + UNDO_WINDOW_MS;
    clearInterval(s.undoTicker);
    s.undoTicker = setInterval(() => {
      if (Date.now() >= s.undoUntil) clearUndo();
      render();
    }, 250);
  }

  function clearUndo() {
    s.undoUntil = 0;
    clearInterval(s.undoTicker);
    s.undoTicker = null;
  }

  function undoLeftMs() {
    return Math.max(0, s.undoUntil - Date.now());
  }

  function pressUndo() {
    if (s.fatal || undoLeftMs() <= 0) return;
    if (!send({ type: 'undo_next' })) return;
    clearUndo();
    s.undoPending = true;
    render();
  }

  function blockLast() {
    const matchId = s.matchId || s.lastMatchId;
    if (!matchId || s.blocked.has(matchId)) return;
    if (!send({ type: 'block', match_id: matchId })) return;
    s.blocked.add(matchId);
    system("You won't be matched with this person again.");
    render();
  }

  function toggleMuteChat() {
    if (s.phase !== 'chatting') return;
    s.chatMuted = !s.chatMuted;
    el.log.classList.toggle('stranger-muted', s.chatMuted);
    system(s.chatMuted ? "Chat muted: the stranger's messages are hidden for this call." : 'Chat unmuted.');
    render();
  }

  function reveal() {
    s.revealed = true;
    render();
  }

  function pressNext() {
    if (s.fatal) return;
    if (s.phase === 'chatting') {
      if (Date.now() < s.nextArmedUntil) {
        disarmNext();
        skip();
      } else {
        s.nextArmedUntil = Date.now() + NEXT_CONFIRM_MS;
        clearTimeout(s.nextTimer);
        s.nextTimer = setTimeout(() => {
          disarmNext();
          render();
        }, NEXT_CONFIRM_MS);
        render();
      }
    } else if (s.phase === 'ended' || s.phase === 'idle') {
      startSearching();
    }
  }

  function disarmNext() {
    s.nextArmedUntil = 0;
    clearTimeout(s.nextTimer);
    s.nextTimer = null;
  }

  function stop() {
    clearUndo();
    serviceAvailable();
    if (s.phase === 'chatting') {
      send({ type: 'leave' });
      endCall();
      system('You have disconnected.');
    } else if (s.phase === 'searching' || s.phase === 'ended') {
      // After the stranger left, `leave` tells the server we stopped, so an undo from
      // that stranger does not pull us back into a call from the home screen.
      send({ type: 'leave' });
    }
    s.wantSearch = false;
    s.queued = false;
    setPhase('idle');
  }

  function report(reason, block) {
    const matchId = s.matchId || s.lastMatchId;
    if (!matchId) return;
    send({ type: 'report', match_id: matchId, reason: Array.from(reason).slice(0, MAX_REASON_CHARS).join('') });
    if (block && !s.blocked.has(matchId)) {
      send({ type: 'block', match_id: matchId });
      s.blocked.add(matchId);
    }
    if (s.phase === 'chatting') skip({ undoable: false });
    else {
      clearUndo();
      startSearching();
    }
    showNotice('Thanks. The stranger was reported, and you are looking for someone new.', 'info');
  }

  // ---------------------------------------------------------------- chat

  function clampChars(text, max) {
    const chars = Array.from(text);
    return chars.length > max ? chars.slice(0, max).join('') : text;
  }

  function sendChat(raw) {
    const text = clampChars(raw.trim(), MAX_CHAT_CHARS);
    if (!text || s.phase !== 'chatting' || !s.matchId) return false;
    if (!send({ type: 'chat', match_id: s.matchId, text })) {
      if (s.awaitingResume) system('Not sent: reconnecting to the server…');
      return false;
    }
    addChatLine('me', text);
    setTyping(false);
    return true;
  }

  function onStrangerChat(text) {
    showStrangerTyping(false);
    addChatLine('stranger', text);
    if (auto.echo && !text.startsWith(ECHO_PREFIX)) sendChat(ECHO_PREFIX + text);
  }

  function setTyping(on) {
    if (!on) {
      clearTimeout(s.typingTimer);
      s.typingTimer = null;
    }
    if (on === s.typingSent) return;
    s.typingSent = on;
    if (s.matchId && s.phase === 'chatting') send({ type: 'typing', match_id: s.matchId, active: on });
  }

  function onComposeInput() {
    autosize();
    if (s.phase !== 'chatting') return;
    if (el.message.value.trim()) {
      setTyping(true);
      clearTimeout(s.typingTimer);
      s.typingTimer = setTimeout(() => setTyping(false), TYPING_IDLE_MS);
    } else {
      setTyping(false);
    }
  }

  function showStrangerTyping(on) {
    clearTimeout(s.strangerTypingTimer);
    el.typing.hidden = !on;
    if (on) s.strangerTypingTimer = setTimeout(() => (el.typing.hidden = true), STRANGER_TYPING_MAX_MS);
  }

  function addChatLine(who, text) {
    s.chat.push(`${who}: ${text}`);
    const li = document.createElement('li');
    li.className = who;
    const label = document.createElement('span');
    label.className = 'who';
    label.textContent = who === 'me' ? 'You:' : 'Stranger:';
    li.append(label, document.createTextNode(text));
    appendLog(li);
  }

  function system(text) {
    s.system.push(text);
    const li = document.createElement('li');
    li.className = 'system';
    li.textContent = text;
    appendLog(li);
  }

  function appendLog(li) {
    const log = el.log;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(li);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function clearLog() {
    el.log.replaceChildren();
    el.log.classList.remove('stranger-muted');
    showStrangerTyping(false);
  }

  function autosize() {
    el.message.style.height = 'auto';
    el.message.style.height = `${Math.min(el.message.scrollHeight + 2, 128)}px`;
  }

  // ---------------------------------------------------------------- camera and mic

  async function acquireMedia() {
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setMediaProblem(
        'insecure',
        'The camera only works on a secure page (https:// or localhost). ' +
          'You can still chat by text and see and hear the stranger.',
      );
      return null;
    }
    const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };
    const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
    const gum = (c) => navigator.mediaDevices.getUserMedia(c);
    try {
      const stream = await gum({ video, audio });
      setMediaProblem(null, '');
      return stream;
    } catch (e) {
      if (e.name === 'NotAllowedError' || e.name === 'SecurityError') {
        setMediaProblem(
          'denied',
          'Camera and microphone are blocked. You can still chat by text and see and hear ' +
            'the stranger. To be seen, allow them in the address bar and press Try again.',
        );
        return null;
      }
      // One of the two is missing or busy: take whichever works.
      try {
        const stream = await gum({ video });
        setMediaProblem('no-microphone', 'No microphone found: the stranger will see you but not hear you.');
        return stream;
      } catch {
        /* fall through */
      }
      try {
        const stream = await gum({ audio });
        setMediaProblem('no-camera', 'No camera found: the stranger will hear you but not see you.');
        return stream;
      } catch {
        /* fall through */
      }
      setMediaProblem(
        e.name === 'NotReadableError' ? 'busy' : 'missing',
        e.name === 'NotReadableError'
          ? 'Your camera or microphone is in use by another app. You can still chat by text ' +
              'and see and hear the stranger.'
          : 'No camera or microphone found. You can still chat by text and see and hear the stranger.',
      );
      return null;
    }
  }

  function setMediaProblem(code, text) {
    s.mediaProblem = code;
    el.mediaNote.hidden = !code;
    el.mediaNoteText.textContent = text;
  }

  function setLocalStream(stream) {
    if (s.localStream && s.localStream !== stream) s.localStream.getTracks().forEach((t) => t.stop());
    s.localStream = stream;
    el.localVideo.srcObject = stream;
    el.localOff.hidden = !!localTrack('video');
    if (stream) el.localVideo.play().catch(() => {});
  }

  function localTrack(kind) {
    if (!s.localStream) return null;
    return s.localStream.getTracks().find((t) => t.kind === kind && t.readyState === 'live') || null;
  }

  function retryMedia() {
    s.mediaReady = acquireMedia().then((stream) => {
      if (stream) setLocalStream(stream);
      el.localOff.hidden = !!localTrack('video');
      return stream;
    });
  }

  // ---------------------------------------------------------------- WebRTC

  /// Orders the browser's codecs so H.264 constrained baseline with packetization-mode 1
  /// (what the desktop app sends and decodes) comes first, VP8 after the other H.264
  /// variants, and Opus first for audio. Reordering keeps browser-to-browser calls
  /// working where H.264 is missing.
  function preferCodecs(transceiver, kind) {
    if (typeof transceiver.setCodecPreferences !== 'function') return;
    if (typeof RTCRtpReceiver === 'undefined' || !RTCRtpReceiver.getCapabilities) return;
    const caps = RTCRtpReceiver.getCapabilities(kind);
    if (!caps || !caps.codecs || !caps.codecs.length) return;
    const rank = (c) => {
      const mime = c.mimeType.toLowerCase();
      const fmtp = (c.sdpFmtpLine || '').toLowerCase();
      if (mime === 'video/h264') {
        const pm1 = /packetization-mode=1/.test(fmtp);
        if (pm1 && /profile-level-id=42e01f/.test(fmtp)) return 0;
        if (pm1 && /profile-level-id=42e0/.test(fmtp)) return 1;
        if (pm1 && /profile-level-id=42/.test(fmtp)) return 2;
        return pm1 ? 3 : 4;
      }
      if (mime === 'video/vp8') return 5;
      if (mime === 'audio/opus') return 0;
      if (/\/(rtx|red|ulpfec|flexfec-03)$/.test(mime)) return 9;
      return 6;
    };
    const sorted = caps.codecs.slice().sort((a, b) => rank(a) - rank(b));
    try {
      transceiver.setCodecPreferences(sorted);
    } catch (e) {
      console.warn('peer-stream: setCodecPreferences failed', e);
    }
  }

  function rtcIceServers(list) {
    const out = [];
    for (const srv of list) {
      if (!srv || !Array.isArray(srv.urls) || !srv.urls.length) continue;
      const entry = { urls: srv.urls.map(String) };
      if (typeof srv.username === 'string') entry.username = srv.username;
      if (typeof srv.credential === 'string') entry.credential = srv.credential;
      out.push(entry);
    }
    return out;
  }

  function startCall() {
    closePeer();
    if (typeof RTCPeerConnection === 'undefined') throw new Error('no WebRTC');
    const pc = new RTCPeerConnection({ iceServers: rtcIceServers(s.iceServers) });
    s.pc = pc;
    s.pendingCandidates = [];
    s.signalChain = Promise.resolve();
    s.callFailed = false;
    s.connectTimer = setTimeout(() => {
      if (pc !== s.pc || pc.connectionState === 'connected') return;
      giveUp(pc);
    }, CONNECT_TIMEOUT_MS);
    s.remoteStream = new MediaStream();
    el.remoteVideo.srcObject = s.remoteStream;

    pc.onicecandidate = (ev) => {
      if (pc !== s.pc) return;
      const c = ev.candidate;
      if (!c || !c.candidate) return; // end of candidates: nothing to send
      sendSignal({
        kind: 'candidate',
        candidate: c.candidate,
        sdp_mid: c.sdpMid ?? null,
        sdp_mline_index: c.sdpMLineIndex ?? null,
      });
    };
    pc.ontrack = (ev) => {
      if (pc !== s.pc) return;
      if (!s.remoteStream.getTracks().includes(ev.track)) s.remoteStream.addTrack(ev.track);
      el.remoteVideo.srcObject = s.remoteStream;
      playRemote();
    };
    pc.onconnectionstatechange = () => {
      if (pc !== s.pc) return;
      const state = pc.connectionState;
      if (state === 'connected') {
        clearTimeout(s.connectTimer);
        clearTimeout(s.relayRetryTimer);
        if (s.peerLost) pathBack();
      } else if (state === 'disconnected') {
        pathLost(pc);
      } else if (state === 'failed' && !s.relayRetry) {
        // During the relay-only retry the old attempt's failure is expected: the
        // retry's own timer decides.
        giveUp(pc);
      }
      render();
    };
    s.heard = { packets: 0, at: performance.now() };
    s.pathWatch = setInterval(() => watchPath(pc), PATH_WATCH_MS);

    if (s.role === 'offerer') {
      for (const kind of ['video', 'audio']) {
        const track = localTrack(kind);
        const init = track
          ? { direction: 'sendrecv', streams: [s.localStream] }
          : { direction: 'recvonly' };
        const transceiver = pc.addTransceiver(track || kind, init);
        preferCodecs(transceiver, kind);
      }
      enqueue(pc, async () => {
        const offer = await pc.createOffer();
        await pc.setLocalDescription(offer);
        if (pc === s.pc) sendSignal({ kind: 'offer', sdp: pc.localDescription.sdp });
      });
    }
  }

  /// The stranger's network (or ours) vanished: wait for it, restarting ICE from the
  /// offering side, and give up if it is not back in time.
  function pathLost(pc) {
    if (pc !== s.pc || s.peerLost || s.phase !== 'chatting') return;
    s.peerLost = true;
    system('Connection to the stranger lost — reconnecting…');
    if (s.role === 'offerer') restartIce(pc);
    s.peerLostTimer = setTimeout(() => giveUp(pc), PEER_GIVE_UP_MS);
    render();
  }

  function pathBack() {
    if (!s.peerLost) return;
    s.peerLost = false;
    clearTimeout(s.peerLostTimer);
    system('Reconnected to the stranger.');
    render();
  }

  /// The silence watch: RTP that stops for PEER_SILENT_MS in a call that was receiving
  /// is a lost path (the browser's `disconnected` comes seconds later); RTP flowing again
  /// over a connected transport ends it.
  async function watchPath(pc) {
    if (pc !== s.pc || s.phase !== 'chatting') return;
    let packets = 0;
    try {
      const report = await pc.getStats();
      report.forEach((r) => {
        if (r.type === 'inbound-rtp') packets += r.packetsReceived ?? 0;
      });
    } catch (e) {
      return; // closed meanwhile
    }
    if (pc !== s.pc) return;
    const now = performance.now();
    if (packets !== s.heard.packets) {
      s.heard = { packets, at: now };
      if (s.peerLost && pc.connectionState === 'connected') pathBack();
    } else if (packets > 0 && now - s.heard.at >= PEER_SILENT_MS) {
      pathLost(pc);
    }
  }

  /// Offerer: a new offer with fresh ICE credentials over the same connection.
  function restartIce(pc) {
    enqueue(pc, async () => {
      const offer = await pc.createOffer({ iceRestart: true });
      await pc.setLocalDescription(offer);
      if (pc === s.pc) sendSignal({ kind: 'offer', sdp: pc.localDescription.sdp });
    });
  }

  /// The media path never came up or did not come back: end this match as a failed
  /// connection (the stranger is told they disconnected, not that we skipped) and look
  /// for someone new.
  function giveUp(pc) {
    if (pc !== s.pc || s.phase !== 'chatting' || !s.matchId) return;
    if (!s.relayRetry && retryThroughRelay(pc)) return;
    if (s.reportedMatch !== s.matchId) {
      s.reportedMatch = s.matchId;
      send({ type: 'call_report', match_id: s.matchId, path: 'failed', setup_ms: null });
    }
    sendQueueRequest({ type: 'next', reason: 'connection_failed' });
    endCall();
    s.queued = false;
    system("Couldn't connect to this stranger — finding someone new.");
    setPhase('searching');
  }

  /// Before giving up, a call tries once more through the TURN relay only (as the
  /// desktop app does): with a `turn:`/`turns:` server on offer, the connection keeps
  /// only relay candidates from now on (`iceTransportPolicy: 'relay'`, a fresh
  /// allocation), the offerer restarts ICE, the answerer takes that offer, and the retry
  /// gets its own PEER_GIVE_UP_MS. False when no relay could help.
  function retryThroughRelay(pc) {
    const turn = rtcIceServers(s.iceServers).some((srv) =>
      srv.urls.some((u) => /^turns?:/i.test(u)),
    );
    if (!turn) return false;
    try {
      const config = pc.getConfiguration();
      if (config.iceTransportPolicy === 'relay') return false; // relay-only already
      pc.setConfiguration({ ...config, iceTransportPolicy: 'relay' });
    } catch (e) {
      console.warn('peer-stream: cannot switch the call to relay-only', e);
      return false;
    }
    s.relayRetry = true;
    clearTimeout(s.connectTimer);
    clearTimeout(s.peerLostTimer);
    system('Still no connection — trying once more through a relay server…');
    if (s.role === 'offerer') restartIce(pc);
    s.relayRetryTimer = setTimeout(() => giveUp(pc), PEER_GIVE_UP_MS);
    render();
    return true;
  }

  /// Signals are applied one at a time, in arrival order.
  function enqueue(pc, job) {
    s.signalChain = s.signalChain
      .then(() => (pc === s.pc ? job() : undefined))
      .catch((e) => {
        if (pc !== s.pc) return; // the call ended while this step ran
        console.error('peer-stream: negotiation step failed', e);
        callFailed(`The video connection could not be set up (${e.message}).`);
      });
  }

  function queueSignal(pc, payload) {
    if (!payload || typeof payload !== 'object') return;
    enqueue(pc, () => applySignal(pc, payload));
  }

  async function applySignal(pc, p) {
    switch (p.kind) {
      case 'offer': {
        if (s.role !== 'answerer' || typeof p.sdp !== 'string') return;
        // A later offer is an ICE restart: the tracks are attached already.
        const renegotiating = !!pc.remoteDescription;
        await pc.setRemoteDescription({ type: 'offer', sdp: p.sdp });
        if (!renegotiating) await attachLocalTracks(pc);
        const answer = await pc.createAnswer();
        await pc.setLocalDescription(answer);
        noteVideoShared(pc);
        if (pc === s.pc) sendSignal({ kind: 'answer', sdp: pc.localDescription.sdp });
        await flushCandidates(pc);
        break;
      }
      case 'answer':
        if (pc.signalingState !== 'have-local-offer' || typeof p.sdp !== 'string') return;
        await pc.setRemoteDescription({ type: 'answer', sdp: p.sdp });
        noteVideoShared(pc);
        await flushCandidates(pc);
        break;
      case 'candidate': {
        if (typeof p.candidate !== 'string' || !p.candidate.trim()) return; // end marker
        let candidate = p.candidate.trim();
        if (candidate.startsWith('a=')) candidate = candidate.slice(2);
        if (!candidate.startsWith('candidate:')) candidate = `candidate:${candidate}`;
        const init = {
          candidate,
          // An empty mid (webrtc-rs sends "") names no section: use the index instead.
          sdpMid: typeof p.sdp_mid === 'string' && p.sdp_mid !== '' ? p.sdp_mid : null,
          sdpMLineIndex: Number.isInteger(p.sdp_mline_index) ? p.sdp_mline_index : null,
        };
        if (init.sdpMid === null && init.sdpMLineIndex === null) init.sdpMLineIndex = 0;
        if (!pc.remoteDescription) s.pendingCandidates.push(init);
        else await addCandidate(pc, init);
        break;
      }
      default:
        break;
    }
  }

  /// After the answer: a rejected video m-line (port 0) means the two sides share no
  /// video codec. The call goes on with audio and chat; the page says so instead of
  /// "Connecting video…" (and this is not a failed call).
  function noteVideoShared(pc) {
    if (pc !== s.pc) return;
    const sdp = pc.currentRemoteDescription ? pc.currentRemoteDescription.sdp : '';
    const mine = pc.currentLocalDescription ? pc.currentLocalDescription.sdp : '';
    s.videoUnavailable = /^m=video 0 /m.test(sdp) || /^m=video 0 /m.test(mine);
    if (s.videoUnavailable) {
      system("Video isn't available with this stranger (no video format in common). You can still talk and chat.");
      render();
    }
  }

  async function addCandidate(pc, init) {
    try {
      await pc.addIceCandidate(init);
    } catch (e) {
      console.warn('peer-stream: a remote candidate was rejected', e);
    }
  }

  async function flushCandidates(pc) {
    const pending = s.pendingCandidates;
    s.pendingCandidates = [];
    for (const c of pending) await addCandidate(pc, c);
  }

  /// Answerer: the offer created the transceivers; send our tracks on them.
  async function attachLocalTracks(pc) {
    const used = new Set();
    for (const t of pc.getTransceivers()) {
      const kind = t.receiver.track.kind;
      const track = used.has(kind) ? null : localTrack(kind);
      if (track) {
        used.add(kind);
        await t.sender.replaceTrack(track);
        if (typeof t.sender.setStreams === 'function') t.sender.setStreams(s.localStream);
        t.direction = 'sendrecv';
      } else {
        t.direction = 'recvonly';
      }
      preferCodecs(t, kind);
    }
  }

  function playRemote() {
    el.remoteVideo.play().catch((e) => {
      if (e.name !== 'NotAllowedError') return;
      // Autoplay with sound needs a click first: play muted and offer a button.
      el.remoteVideo.muted = true;
      el.unmute.hidden = false;
      el.remoteVideo.play().catch(() => {});
    });
  }

  function onRemoteVideoFrame() {
    if (s.phase === 'chatting' && el.remoteVideo.videoWidth > 0) {
      el.body.classList.add('has-remote-video');
      // Call setup as the user sees it: matched → the stranger's first frame.
      if (s.setupMs === null && s.matchedAt !== null) {
        s.setupMs = Math.round(performance.now() - s.matchedAt);
        reportCall(s.pc, s.matchId, s.setupMs);
      }
    }
  }

  /// `call_report` once per match (PROTOCOL.md): the path the call took (the selected
  /// local candidate's type) and its setup time, for the operator's /metrics.
  async function reportCall(pc, matchId, setupMs) {
    if (!pc || s.reportedMatch === matchId) return;
    s.reportedMatch = matchId;
    let path = null;
    try {
      const stats = await pc.getStats();
      let pairId = null;
      stats.forEach((r) => {
        if (r.type === 'transport' && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
      });
      let pair = pairId ? stats.get(pairId) : null;
      if (!pair) {
        stats.forEach((r) => {
          if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') pair = r;
        });
      }
      const local = pair ? stats.get(pair.localCandidateId) : null;
      if (local && ['host', 'srflx', 'prflx', 'relay'].includes(local.candidateType)) {
        path = local.candidateType;
      }
    } catch (e) {
      console.warn('peer-stream: no stats for the call report', e);
    }
    if (path) send({ type: 'call_report', match_id: matchId, path, setup_ms: Math.min(setupMs, 600000) });
  }

  /// Says once per call, in the chat, that video will not come; text chat goes on.
  function callFailed(text) {
    clearTimeout(s.connectTimer);
    if (s.callFailed) return;
    s.callFailed = true;
    system(text);
    render();
  }

  function closePeer() {
    const pc = s.pc;
    s.pc = null;
    clearTimeout(s.connectTimer);
    s.callFailed = false;
    s.videoUnavailable = false;
    s.peerLost = false;
    clearTimeout(s.peerLostTimer);
    clearInterval(s.pathWatch);
    s.pathWatch = null;
    s.relayRetry = false;
    clearTimeout(s.relayRetryTimer);
    s.pendingCandidates = [];
    if (pc) {
      pc.onicecandidate = null;
      pc.ontrack = null;
      pc.onconnectionstatechange = null;
      pc.close();
    }
    if (s.remoteStream) s.remoteStream.getTracks().forEach((t) => t.stop());
    s.remoteStream = null;
    el.remoteVideo.srcObject = null;
    el.body.classList.remove('has-remote-video');
  }

  function endCall() {
    closePeer();
    setTyping(false);
    s.typingSent = false;
    disarmNext();
    showStrangerTyping(false);
    if (s.matchId) s.lastMatchId = s.matchId;
    s.matchId = null;
    s.role = null;
  }

  async function stats() {
    const pc = s.pc;
    if (!pc) return null;
    const report = await pc.getStats();
    const codecOf = (id) => {
      const c = id ? report.get(id) : null;
      return c ? { mimeType: c.mimeType, payloadType: c.payloadType, sdpFmtpLine: c.sdpFmtpLine ?? null } : null;
    };
    const out = {
      connectionState: pc.connectionState,
      localDescriptionType: pc.localDescription ? pc.localDescription.type : null,
      remoteDescriptionType: pc.remoteDescription ? pc.remoteDescription.type : null,
      inboundVideo: null,
      inboundAudio: null,
      outboundVideo: null,
      outboundAudio: null,
      codecs: [],
    };
    report.forEach((r) => {
      const kind = r.kind || r.mediaType;
      if (r.type === 'inbound-rtp') {
        const entry = {
          packetsReceived: r.packetsReceived ?? 0,
          bytesReceived: r.bytesReceived ?? 0,
          framesDecoded: r.framesDecoded ?? 0,
          frameWidth: r.frameWidth ?? null,
          frameHeight: r.frameHeight ?? null,
          codec: codecOf(r.codecId),
        };
        if (kind === 'video') out.inboundVideo = entry;
        else if (kind === 'audio') out.inboundAudio = entry;
      } else if (r.type === 'outbound-rtp') {
        const entry = {
          packetsSent: r.packetsSent ?? 0,
          bytesSent: r.bytesSent ?? 0,
          framesEncoded: r.framesEncoded ?? 0,
          encoderImplementation: r.encoderImplementation ?? null,
          codec: codecOf(r.codecId),
        };
        if (kind === 'video') out.outboundVideo = entry;
        else if (kind === 'audio') out.outboundAudio = entry;
      } else if (r.type === 'codec') {
        out.codecs.push(r.mimeType);
      }
    });
    out.framesDecoded = out.inboundVideo ? out.inboundVideo.framesDecoded : 0;
    out.audioPacketsReceived = out.inboundAudio ? out.inboundAudio.packetsReceived : 0;
    return out;
  }

  // ---------------------------------------------------------------- check my setup

  /// Resolves once the server says welcome (connecting if needed); false after `ms`.
  function whenWelcomed(ms) {
    if (s.welcomed) return Promise.resolve(true);
    connect();
    return new Promise((resolve) => {
      const start = Date.now();
      const poll = setInterval(() => {
        if (s.welcomed || Date.now() - start > ms) {
          clearInterval(poll);
          resolve(s.welcomed);
        }
      }, 50);
    });
  }

  /// Asks the server for its ICE servers; resolves with { list, rttMs } or null.
  function requestIceServers(ms) {
    return new Promise((resolve) => {
      const t0 = performance.now();
      let done = false;
      const timer = setTimeout(() => {
        if (done) return;
        done = true;
        resolve(null);
      }, ms);
      s.iceWaiters.push((list) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve({ list, rttMs: Math.round(performance.now() - t0) });
      });
      if (!send({ type: 'ice_servers' })) {
        done = true;
        clearTimeout(timer);
        resolve(null);
      }
    });
  }

  /// Gathers ICE candidates against `iceServers`; resolves with counts by type.
  function gatherCandidates(iceServers, ms) {
    const counts = { host: 0, srflx: 0, relay: 0 };
    if (typeof RTCPeerConnection === 'undefined') return Promise.resolve(counts);
    return new Promise((resolve) => {
      let pc;
      try {
        pc = new RTCPeerConnection({ iceServers: rtcIceServers(iceServers) });
      } catch (e) {
        console.warn('peer-stream: setup check could not create a peer connection', e);
        resolve(counts);
        return;
      }
      let finished = false;
      const finish = () => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        pc.onicecandidate = null;
        pc.close();
        resolve(counts);
      };
      const timer = setTimeout(finish, ms);
      pc.onicecandidate = (ev) => {
        if (!ev.candidate) {
          finish();
          return;
        }
        const m = / typ (host|srflx|prflx|relay)/.exec(ev.candidate.candidate || '');
        const type = ev.candidate.type || (m && m[1]);
        if (type === 'host') counts.host += 1;
        else if (type === 'srflx' || type === 'prflx') counts.srflx += 1;
        else if (type === 'relay') counts.relay += 1;
      };
      pc.createDataChannel('setup-check');
      pc.createOffer()
        .then((offer) => pc.setLocalDescription(offer))
        .catch((e) => {
          console.warn('peer-stream: setup check offer failed', e);
          finish();
        });
    });
  }

  /// Whether the page's server is on this machine or a private network, where host
  /// candidates reach the other side (the same rule as `peer-stream --check`).
  function serverIsLocal() {
    const h = location.hostname.replace(/^\[|\]$/g, '').toLowerCase();
    if (h === 'localhost' || h.endsWith('.local') || h === '::1') return true;
    const v4 = /^(\d+)\.(\d+)\.\d+\.\d+$/.exec(h);
    if (v4) {
      const [a, b] = [Number(v4[1]), Number(v4[2])];
      return a === 127 || a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) ||
        (a === 169 && b === 254);
    }
    return /^f[cd][0-9a-f]{2}:/.test(h) || /^fe80:/.test(h);
  }

  function deviceName(track, fallback) {
    if (!track) return null;
    return track.label || fallback;
  }

  async function runSetupCheck() {
    const run = ++s.setupRun;
    el.setup.hidden = false;
    el.setupOpen.hidden = true;
    el.home.classList.add('setup-open');
    for (const d of [el.setupServer, el.setupCamera, el.setupMic, el.setupSpeaker, el.setupNetwork]) {
      d.textContent = 'Checking…';
    }
    el.setupVerdict.textContent = 'Checking…';
    el.setupVerdict.dataset.verdict = '';
    el.setupDetail.textContent = '';
    const report = {
      server_ok: false,
      server_rtt_ms: null,
      camera: null,
      microphone: null,
      speaker: null,
      stun_ok: false,
      turn_ok: false,
      candidates: { host: 0, srflx: 0, relay: 0 },
      can_call: 'none',
      done: false,
    };
    s.setup = report;

    // Camera and microphone: the stream the page already asked for.
    const stream = await s.mediaReady;
    if (run !== s.setupRun) return;
    const videoTrack = localTrack('video');
    const audioTrack = localTrack('audio');
    report.camera = deviceName(videoTrack, 'camera');
    report.microphone = deviceName(audioTrack, 'microphone');
    el.setupCamera.textContent = report.camera ? `Found: ${report.camera}` : 'No camera found (or it is blocked)';
    el.setupMic.textContent = report.microphone
      ? `Found: ${report.microphone}`
      : 'No microphone found (or it is blocked)';
    el.setupPreview.srcObject = videoTrack ? stream || s.localStream : null;
    if (videoTrack) el.setupPreview.play().catch(() => {});
    startMeter(audioTrack);
    try {
      const devices = await navigator.mediaDevices.enumerateDevices();
      const out = devices.find((d) => d.kind === 'audiooutput');
      report.speaker = out ? out.label || 'default speaker' : 'default speaker';
    } catch {
      report.speaker = 'default speaker';
    }
    el.setupSpeaker.textContent = `${report.speaker}: press Play a test tone and listen`;

    // Server round trip: an ice_servers request and its reply.
    const welcomed = await whenWelcomed(SETUP_TIMEOUT_MS);
    const reply = welcomed ? await requestIceServers(SETUP_TIMEOUT_MS) : null;
    if (run !== s.setupRun) return;
    report.server_ok = !!reply;
    report.server_rtt_ms = reply ? reply.rttMs : null;
    el.setupServer.textContent = reply
      ? `Reachable: round trip ${reply.rttMs} ms`
      : 'Not reachable: check your internet connection';

    // What the network allows: candidates gathered with the server's STUN/TURN servers.
    const list = reply ? reply.list : [];
    const urls = list.flatMap((x) => (Array.isArray(x.urls) ? x.urls.map(String) : []));
    const stunOffered = urls.some((u) => u.startsWith('stun:'));
    const turnOffered = urls.some((u) => u.startsWith('turn:') || u.startsWith('turns:'));
    el.setupNetwork.textContent = 'Testing…';
    const counts = await gatherCandidates(list, SETUP_TIMEOUT_MS);
    if (run !== s.setupRun) return;
    report.candidates = counts;
    report.stun_ok = counts.srflx > 0;
    report.turn_ok = counts.relay > 0;
    const direct = counts.srflx > 0 || (counts.host > 0 && serverIsLocal());
    report.can_call = !report.server_ok ? 'none' : direct ? 'direct' : counts.relay > 0 ? 'relay' : 'none';
    const offered = (yes, ok) => (!yes ? 'not offered' : ok ? 'works' : 'failed');
    el.setupNetwork.textContent =
      `${counts.host} host, ${counts.srflx} server-reflexive, ${counts.relay} relay candidates`;
    el.setupDetail.textContent =
      `STUN ${offered(stunOffered, report.stun_ok)} · TURN ${offered(turnOffered, report.turn_ok)}`;
    let verdict;
    if (!report.server_ok) verdict = "Calls need the server, and it could not be reached.";
    else if (report.can_call === 'direct') verdict = 'Direct calls work: video goes straight between you and the stranger.';
    else if (report.can_call === 'relay') {
      verdict = "Calls will go through the server's relay (TURN): your network blocks direct connections.";
    } else {
      verdict = 'Your network blocks calls: neither a direct connection nor a relay worked. Text chat still works.';
    }
    el.setupVerdict.textContent = verdict;
    el.setupVerdict.dataset.verdict = report.server_ok ? report.can_call : 'none';
    report.done = true;
  }

  function startMeter(track) {
    if (s.meterStop) s.meterStop();
    s.meterStop = null;
    el.setupLevel.value = 0;
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!track || !Ctx) return;
    try {
      if (!s.audioCtx) s.audioCtx = new Ctx();
      const ctx = s.audioCtx;
      ctx.resume().catch(() => {});
      const source = ctx.createMediaStreamSource(new MediaStream([track]));
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 1024;
      source.connect(analyser);
      const buf = new Float32Array(analyser.fftSize);
      let raf = 0;
      const tick = () => {
        analyser.getFloatTimeDomainData(buf);
        let sum = 0;
        for (const x of buf) sum += x * x;
        // RMS on a rough perceptual scale: quiet speech ~0.2, loud ~0.8.
        el.setupLevel.value = Math.min(1, Math.sqrt(sum / buf.length) * 4);
        raf = requestAnimationFrame(tick);
      };
      tick();
      s.meterStop = () => {
        cancelAnimationFrame(raf);
        source.disconnect();
      };
    } catch (e) {
      console.warn('peer-stream: no level meter', e);
    }
  }

  function playTestTone() {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    if (!s.audioCtx) s.audioCtx = new Ctx();
    const ctx = s.audioCtx;
    ctx.resume().catch(() => {});
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = 440;
    gain.gain.setValueAtTime(0.0001, ctx.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.2, ctx.currentTime + 0.05);
    gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + 1);
    osc.connect(gain).connect(ctx.destination);
    osc.start();
    osc.stop(ctx.currentTime + 1.05);
    s.toneCount = (s.toneCount || 0) + 1;
  }

  function closeSetup() {
    s.setupRun += 1;
    if (s.meterStop) s.meterStop();
    s.meterStop = null;
    el.setupPreview.srcObject = null;
    el.setup.hidden = true;
    el.setupOpen.hidden = false;
    el.home.classList.remove('setup-open');
  }

  // ---------------------------------------------------------------- rendering

  function setPhase(phase) {
    s.phase = phase;
    el.body.dataset.phase = phase;
    if (phase !== 'chatting') el.body.classList.remove('has-remote-video');
    render();
  }

  function render() {
    const p = s.phase;
    const connecting = !!s.ws && !s.welcomed;

    const countsText = s.counts
      ? `${s.counts.online.toLocaleString()} online · ${s.counts.waiting.toLocaleString()} waiting`
      : null;
    if (s.welcomed && countsText) {
      el.online.textContent = countsText;
      el.online.classList.add('live');
    } else if (s.welcomed && s.online !== null) {
      el.online.textContent = `${s.online.toLocaleString()} online`;
      el.online.classList.add('live');
    } else {
      el.online.textContent = connecting ? 'Connecting…' : 'Offline';
      el.online.classList.remove('live');
    }

    el.home.hidden = p !== 'idle';
    el.chat.hidden = p === 'idle';
    el.controls.hidden = p === 'idle';
    el.start.disabled = !!s.fatal;

    const chatting = p === 'chatting';
    el.message.disabled = !chatting;
    el.send.disabled = !chatting;

    const armed = chatting && Date.now() < s.nextArmedUntil;
    el.next.disabled = p === 'searching' || !!s.fatal;
    el.next.classList.toggle('armed', armed);
    el.nextLabel.textContent = armed ? 'Really?' : p === 'ended' ? 'New stranger' : 'Next';
    el.stop.disabled = p === 'idle';
    el.report.disabled = !(chatting || (p === 'ended' && s.lastMatchId));
    el.homeCounts.hidden = !(s.welcomed && countsText);
    el.homeCounts.textContent = countsText || '';

    const hidden = chatting && !s.revealed;
    el.remoteBox.classList.toggle('blurred', hidden);
    el.revealBox.hidden = !hidden;
    el.alwaysShow.checked = s.alwaysShow;

    const undoLeft = undoLeftMs();
    el.undo.hidden = !(undoLeft > 0 && (p === 'searching' || chatting));
    el.undoLabel.textContent = `Undo (${Math.ceil(undoLeft / 1000)})`;

    el.muteChat.hidden = !chatting;
    el.muteChat.textContent = s.chatMuted ? 'Unmute chat' : 'Mute chat';
    el.muteChat.setAttribute('aria-pressed', s.chatMuted ? 'true' : 'false');
    const blockable = !chatting && p !== 'idle' && s.lastMatchId && !s.blocked.has(s.lastMatchId);
    el.block.hidden = !blockable;

    let status = '';
    let spinning = false;
    if (p === 'idle') {
      status = s.fatal ? 'Not available right now.' : 'Press Start to meet someone new.';
    } else if (p === 'searching') {
      spinning = true;
      if (!s.welcomed) status = 'Connecting to the server…';
      else if (s.serviceBusy) status = SERVICE_BUSY_TEXT;
      else status = `Looking for a stranger… (${countsText || `${(s.online ?? 1).toLocaleString()} online`})`;
    } else if (p === 'chatting') {
      const state = s.pc ? s.pc.connectionState : 'new';
      if (s.peerLost) {
        spinning = true;
        status = 'Connection to the stranger lost — reconnecting…';
      } else if (s.videoUnavailable && state !== 'failed') {
        status = "Video isn't available with this stranger — you can still talk and chat.";
      } else if (state === 'failed' || s.callFailed) {
        status = 'No video with this stranger. You can still chat by text.';
      } else if (s.remoteStream && !s.remoteStream.getVideoTracks().length && state === 'connected') {
        status = 'The stranger has no camera.';
      } else {
        spinning = true;
        status = 'Connecting video…';
      }
    } else if (p === 'ended') {
      status = 'The stranger has left. Press New stranger (or Esc) to meet someone else.';
    }
    el.remoteStatus.textContent = status;
    el.spinner.hidden = !spinning;
  }

  let bannerReload = false;

  function showBanner(text, { retry = false, reload = false } = {}) {
    clearTimeout(s.noticeTimer);
    el.banner.dataset.kind = 'error';
    el.bannerText.textContent = text;
    el.bannerRetry.hidden = !retry;
    el.bannerRetry.textContent = reload ? 'Reload' : 'Retry now';
    bannerReload = reload;
    el.banner.hidden = false;
  }

  function hideBanner() {
    el.banner.hidden = true;
  }

  /// A short message that goes away by itself (unless a real error replaces it).
  function showNotice(text, kind = 'error') {
    if (!el.banner.hidden && el.banner.dataset.kind === 'error' && !el.bannerRetry.hidden) return;
    el.banner.dataset.kind = kind;
    el.bannerText.textContent = text;
    el.bannerRetry.hidden = true;
    el.banner.hidden = false;
    clearTimeout(s.noticeTimer);
    s.noticeTimer = setTimeout(hideBanner, 5000);
  }

  // ---------------------------------------------------------------- wiring

  function openReport() {
    if (el.report.disabled) return;
    el.reportDetails.value = '';
    if (typeof el.reportDialog.showModal === 'function') el.reportDialog.showModal();
    else el.reportDialog.setAttribute('open', '');
  }

  function wire() {
    el.start.addEventListener('click', startSearching);
    el.next.addEventListener('click', pressNext);
    el.stop.addEventListener('click', stop);
    el.report.addEventListener('click', openReport);
    el.reportCancel.addEventListener('click', () => el.reportDialog.close());
    el.reportForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const choice = el.reportForm.querySelector('input[name="reason"]:checked');
      const details = el.reportDetails.value.trim();
      const reason = (choice ? choice.value : 'other') + (details ? `: ${details}` : '');
      el.reportDialog.close();
      report(reason, el.reportBlock.checked);
    });
    el.bannerRetry.addEventListener('click', () => {
      if (bannerReload) {
        location.reload();
        return;
      }
      s.retryDelay = 1000;
      hideBanner();
      connect();
    });
    el.mediaRetry.addEventListener('click', retryMedia);
    el.unmute.addEventListener('click', () => {
      el.remoteVideo.muted = false;
      el.unmute.hidden = true;
      el.remoteVideo.play().catch(() => {});
    });
    el.remoteVideo.addEventListener('loadeddata', onRemoteVideoFrame);
    el.remoteVideo.addEventListener('resize', onRemoteVideoFrame);
    el.remoteVideo.addEventListener('playing', onRemoteVideoFrame);
    el.compose.addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (sendChat(el.message.value)) {
        el.message.value = '';
        autosize();
      }
    });
    el.message.addEventListener('input', onComposeInput);
    el.message.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        el.compose.requestSubmit();
      }
    });
    el.interests.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') {
        ev.preventDefault();
        startSearching();
      }
    });
    document.addEventListener('keydown', (ev) => {
      // Alt+U: undo the last Next. Alt never types in the chat box here, so the
      // shortcut cannot clash with text editing (handled before any input sees it).
      if (ev.altKey && !ev.ctrlKey && !ev.metaKey && (ev.code === 'KeyU' || ev.key === 'u' || ev.key === 'U')) {
        ev.preventDefault();
        if (!ev.repeat) pressUndo();
        return;
      }
      if (ev.key !== 'Escape' || ev.repeat || el.reportDialog.open) return;
      ev.preventDefault();
      pressNext();
    }, true);
    el.undo.addEventListener('click', pressUndo);
    el.reveal.addEventListener('click', reveal);
    el.alwaysShow.addEventListener('change', () => {
      s.alwaysShow = el.alwaysShow.checked;
      saveAlwaysShow(s.alwaysShow);
      if (s.alwaysShow) s.revealed = true;
      render();
    });
    el.muteChat.addEventListener('click', toggleMuteChat);
    el.block.addEventListener('click', blockLast);
    el.setupOpen.addEventListener('click', () => runSetupCheck());
    el.setupAgain.addEventListener('click', () => runSetupCheck());
    el.setupClose.addEventListener('click', closeSetup);
    el.setupTone.addEventListener('click', playTestTone);
    window.addEventListener('pagehide', () => {
      if (s.ws) s.ws.close(1000, 'page closed');
    });
  }

  window.peerStream = Object.freeze({
    get state() { return s.phase; },
    get matchId() { return s.matchId; },
    get lastMatchId() { return s.lastMatchId; },
    get role() { return s.role; },
    get welcomed() { return s.welcomed; },
    get queued() { return s.queued; },
    get online() { return s.online; },
    get commonInterests() { return s.commonInterests.slice(); },
    get chat() { return s.chat.slice(); },
    get system() { return s.system.slice(); },
    get media() {
      return { video: !!localTrack('video'), audio: !!localTrack('audio'), problem: s.mediaProblem };
    },
    get connectionState() { return s.pc ? s.pc.connectionState : null; },
    get setupMs() { return s.setupMs; },
    get counts() { return s.counts ? { ...s.counts } : null; },
    get videoHidden() { return s.phase === 'chatting' && !s.revealed; },
    get undoLeft() { return undoLeftMs(); },
    get chatMuted() { return s.chatMuted; },
    get setup() { return s.setup ? JSON.parse(JSON.stringify(s.setup)) : null; },
    get toneCount() { return s.toneCount || 0; },
    get serviceBusy() { return s.serviceBusy; },
    get busyRetries() { return s.busyRetries; },
    stats,
  });

  wire();
  if (auto.interests) el.interests.value = auto.interests;
  render();
  connect();
  retryMedia();
  if (auto.start) s.mediaReady.then(() => startSearching());
})();
