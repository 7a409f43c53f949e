/*
 * HyperLive: the portal's live streams in the browser (no dependencies; xterm.js is loaded
 * on demand for consoles). The server side is portal/consumers.py.
 *
 *   HyperLive.events(url, {after, onEvent, onReset})  -> handle with .close(), .drop()
 *       Opens url (e.g. "/ws/t/acme/" or "/ws/t/acme/apps/7/"), replays events with id > after,
 *       then live ones. onEvent({type:"event", id, kind, app_id, instance_id, data}) gets each
 *       id once, in order. After a drop it reconnects with backoff (0.5 s doubling to 5 s) and
 *       resumes with after=<last id>. A {"type":"reset"} (too much missed) calls onReset, by
 *       default location.reload().
 *
 *   HyperLive.console(url, element, {onStatus, onLines})  -> handle with .close(), .drop()
 *       Renders the instance console into element: an xterm.js terminal, or a <pre> when
 *       xterm.js cannot load. Reconnects the same way and resumes with after=<last seq>, so no
 *       line is shown twice or skipped. onStatus({state, exit_code, message}) with state:
 *         "waiting"      the instance is not running yet (the server starts the stream when it does)
 *         "live"         lines are streaming
 *         "unavailable"  the instance's host does not answer; the server keeps asking (and the
 *                        socket, like any dropped one, keeps reconnecting): "live" follows
 *         "exited" | "gone"  no more lines will come (the only states that stop reconnecting)
 *         "refused"      the socket was closed with 4403/4404
 *       element.dataset.consoleState mirrors the state; the portal's own notes ("[exited ...]",
 *       the reason a console is waiting, gone or unavailable, a live one whose app printed
 *       nothing yet) go to a .console-note element beside the
 *       output, never into it, so app output cannot fake them. Guest text reaches the terminal
 *       through terminalText(): only SGR (colour/style) sequences are kept; cursor moves,
 *       screen clears, OSC (titles, OSC 8 links) and other control characters are dropped, and
 *       the terminal opens only http(s) links, in a new tab without an opener.
 *       element also gets a "hyperlive:lines" event per batch ({detail: {lines}}).
 *       handle.lastSeq is the seq of the last line shown (-1: none).
 *
 *   handle.drop()  closes the current socket as a dropped network would: the handle reconnects
 *       and resumes (for tests and for debugging from the browser console).
 *
 *   HyperLive.terminalText(text)  guest text as written to the terminal (see above).
 *
 *   HyperLive.attachConsoles(root)  attaches a console to every [data-console-url] in root
 *   HyperLive.loadXterm()  -> Promise<bool>: the vendored xterm.js loaded (static/js/shell.js)
 *       (once per element; element.hyperLiveConsole is its handle) and closes those whose
 *       element left the page; runs on DOMContentLoaded for the document. Call it after
 *       swapping a fragment in.
 *
 * The <script> tag may carry data-xterm-js / data-xterm-css: where the vendored xterm lives.
 */
(function () {
  "use strict";

  var BACKOFF_MIN_MS = 500;
  var BACKOFF_MAX_MS = 5000;
  var REFUSED = { 4403: true, 4404: true };
  var PRE_MAX_LINES = 5000;
  var DROPPED = 4000; // the close code drop() uses: not a refusal, so the stream reconnects
  // An escape sequence or a control character (TAB excepted): CSI, OSC (to BEL/ST or the end),
  // DCS/SOS/PM/APC (to ST or the end), any other ESC sequence, a C0/DEL/C1 character.
  var TERMINAL_TOKEN =
    /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]*(?:\x1b\\)?|\x1b[ -\/]*[0-~]?|[\x00-\x08\x0a-\x1f\x7f-\x9f]/g;
  var SGR = /^\x1b\[[0-9;:]*m$/;
  var script = document.currentScript;
  var xtermJs = script && script.dataset.xtermJs;
  var xtermCss = script && script.dataset.xtermCss;
  var xtermLoading = null;

  function socketUrl(path, name, value) {
    var url = new URL(path, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (value !== null && value !== undefined) url.searchParams.set(name, String(value));
    return url.toString();
  }

  function terminalText(text) {
    return String(text).replace(TERMINAL_TOKEN, function (token) {
      return SGR.test(token) ? token : "";
    });
  }

  function plainText(text) {
    return String(text).replace(TERMINAL_TOKEN, "");
  }

  function openSafeLink(event, uri) {
    if (!/^https?:\/\//i.test(uri)) return;
    var opened = window.open(uri, "_blank", "noopener,noreferrer");
    if (opened) opened.opener = null;
  }

  // One WebSocket that comes back after drops: open(resumeValue) is called for every attempt.
  function reconnecting(makeUrl, onMessage, onGiveUp) {
    var socket = null;
    var closed = false;
    var delay = BACKOFF_MIN_MS;
    var timer = null;

    function connect() {
      if (closed) return;
      socket = new WebSocket(makeUrl());
      socket.onmessage = function (message) {
        delay = BACKOFF_MIN_MS;
        var payload;
        try {
          payload = JSON.parse(message.data);
        } catch (error) {
          return;
        }
        onMessage(payload);
      };
      socket.onclose = function (event) {
        socket = null;
        if (closed) return;
        if (REFUSED[event.code]) {
          closed = true;
          onGiveUp(event.code);
          return;
        }
        timer = setTimeout(connect, delay);
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      };
    }

    connect();
    return {
      close: function () {
        closed = true;
        clearTimeout(timer);
        if (socket) socket.close(1000);
      },
      stop: function () {
        closed = true;
        clearTimeout(timer);
      },
      drop: function () {
        if (socket) socket.close(DROPPED);
      },
    };
  }

  function events(url, options) {
    options = options || {};
    var last = options.after === undefined || options.after === null || options.after === "" ? null : Number(options.after);
    var onEvent = options.onEvent || function () {};
    var onReset =
      options.onReset ||
      function () {
        window.location.reload();
      };
    var handle = { lastId: last };
    var connection = reconnecting(
      function () {
        return socketUrl(url, "after", last);
      },
      function (message) {
        if (message.type === "reset") {
          onReset();
          return;
        }
        if (message.type !== "event" || (last !== null && message.id <= last)) return;
        last = handle.lastId = message.id;
        onEvent(message);
      },
      function () {}
    );
    handle.close = connection.close;
    handle.drop = connection.drop;
    return handle;
  }

  function loadXterm() {
    if (window.Terminal) return Promise.resolve(true);
    if (!xtermJs) return Promise.resolve(false);
    if (!xtermLoading) {
      xtermLoading = new Promise(function (resolve) {
        if (xtermCss) {
          var link = document.createElement("link");
          link.rel = "stylesheet";
          link.href = xtermCss;
          document.head.appendChild(link);
        }
        var tag = document.createElement("script");
        tag.src = xtermJs;
        tag.onload = function () {
          resolve(Boolean(window.Terminal));
        };
        tag.onerror = function () {
          resolve(false);
        };
        document.head.appendChild(tag);
      });
    }
    return xtermLoading;
  }

  // The portal's notes, outside the output: app text can never be taken for them.
  function noteLine(element) {
    var note = document.createElement("div");
    note.className = "console-note";
    note.setAttribute("role", "status");
    element.appendChild(note);
    return function (text) {
      note.textContent = text;
    };
  }

  function preView(element) {
    var pre = document.createElement("pre");
    pre.className = "console-lines";
    element.appendChild(pre);
    return {
      write: function (line) {
        var row = document.createElement("span");
        row.className = line.stream === "stderr" ? "stderr" : "stdout";
        row.dataset.seq = line.seq;
        row.textContent = plainText(line.text) + "\n";
        pre.appendChild(row);
        while (pre.childNodes.length > PRE_MAX_LINES) pre.removeChild(pre.firstChild);
        pre.scrollTop = pre.scrollHeight;
      },
      mark: function (text) {
        this.write({ seq: -1, stream: "note", text: text });
      },
      note: noteLine(element),
    };
  }

  function terminalView(element) {
    var terminal = new window.Terminal({
      convertEol: true,
      disableStdin: true,
      scrollback: 5000,
      rows: Number(element.dataset.consoleRows) || 24,
      fontSize: 13,
      linkHandler: { activate: openSafeLink, allowNonHttpProtocols: false },
    });
    terminal.open(element);
    return {
      terminal: terminal,
      write: function (line) {
        // Every line ends with a reset, so no colour it set runs into the next one.
        var text = terminalText(line.text) + "\x1b[0m";
        terminal.write(line.stream === "stderr" ? "\x1b[31m" + text + "\r\n" : text + "\r\n");
      },
      mark: function (text) {
        terminal.write("\x1b[2m" + text + "\x1b[0m\r\n");
      },
      note: noteLine(element),
    };
  }

  function consoleStream(url, element, options) {
    options = options || {};
    var onStatus = options.onStatus || function () {};
    var handle = { lastSeq: -1, view: null };
    var queue = []; // messages that arrive before the view is ready
    var connection = null;

    function show(message) {
      var view = handle.view;
      if (message.type === "lines") {
        var shown = [];
        message.lines.forEach(function (line) {
          if (line.seq <= handle.lastSeq) return; // already on screen (a resumed stream)
          view.write(line);
          handle.lastSeq = line.seq;
          shown.push(line);
        });
        if (shown.length && handle.silentNote) {
          handle.silentNote = false;
          view.note("");
        }
        if (shown.length) {
          element.dispatchEvent(new CustomEvent("hyperlive:lines", { detail: { lines: shown } }));
          if (options.onLines) options.onLines(shown);
        }
      } else if (message.type === "truncated") {
        if (message.first_seq > handle.lastSeq + 1) {
          view.mark("[earlier output not shown; from line " + message.first_seq + "]");
          handle.lastSeq = message.first_seq - 1;
        }
      } else if (message.type === "status") {
        element.dataset.consoleState = message.state;
        if (message.state === "exited" || message.state === "gone") {
          view.note(
            message.state === "exited"
              ? "[exited" + (message.exit_code === null ? "" : " with code " + message.exit_code) + "]"
              : "[" + (message.message || "console not available") + "]"
          );
          if (connection) connection.stop(); // nothing more will come: do not reconnect
        } else if (message.state === "unavailable") {
          view.note("[" + (message.message || "the host does not answer; retrying") + "]");
        } else if (message.state === "live") {
          // A first user's app may print nothing (the demo web server): say so, not a blank box.
          handle.silentNote = handle.lastSeq < 0;
          view.note(handle.silentNote ? "[live: the app has printed nothing yet]" : "");
        } else if (message.state === "waiting") {
          view.note("[" + (message.message || "waiting for the instance to run") + "]");
        }
        onStatus(message);
      }
    }

    function receive(message) {
      if (handle.view) show(message);
      else queue.push(message);
    }

    connection = reconnecting(
      function () {
        return socketUrl(url, "after", handle.lastSeq);
      },
      receive,
      function (code) {
        element.dataset.consoleState = "refused";
        onStatus({ state: "refused", exit_code: null, message: "closed with code " + code });
      }
    );
    loadXterm().then(function (available) {
      var view = null;
      if (available) {
        try {
          view = terminalView(element);
        } catch (error) {
          view = null;
        }
      }
      handle.view = view || preView(element);
      queue.splice(0).forEach(show);
    });
    handle.drop = connection.drop;
    handle.close = function () {
      connection.close();
      if (handle.view && handle.view.terminal) handle.view.terminal.dispose();
    };
    return handle;
  }

  var attached = [];

  function attachConsoles(root) {
    // Consoles whose element was swapped out of the page close their socket.
    attached = attached.filter(function (element) {
      if (document.contains(element)) return true;
      element.hyperLiveConsole.close();
      return false;
    });
    var scope = root || document;
    var elements = scope.querySelectorAll ? scope.querySelectorAll("[data-console-url]") : [];
    Array.prototype.forEach.call(elements, function (element) {
      if (element.hyperLiveConsole) return;
      element.hyperLiveConsole = consoleStream(element.dataset.consoleUrl, element, {});
      attached.push(element);
    });
  }

  window.HyperLive = {
    events: events,
    console: consoleStream,
    attachConsoles: attachConsoles,
    terminalText: terminalText,
    loadXterm: loadXterm,
  };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      attachConsoles(document);
    });
  } else {
    attachConsoles(document);
  }
})();
