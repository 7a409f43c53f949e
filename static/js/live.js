/*
 * HyperLive: the portal's live streams in the browser (no dependencies; xterm.js is loaded
 * on demand for consoles). The server side is portal/consumers.py.
 *
 *   HyperLive.events(url, {after, onEvent, onReset})  -> handle with .close()
 *       Opens url (e.g. "/ws/t/acme/" or "/ws/t/acme/apps/7/"), replays events with id > after,
 *       then live ones. onEvent({type:"event", id, kind, app_id, instance_id, data}) gets each
 *       id once, in order. After a drop it reconnects with backoff (0.5 s doubling to 5 s) and
 *       resumes with after=<last id>. A {"type":"reset"} (too much missed) calls onReset, by
 *       default location.reload().
 *
 *   HyperLive.console(url, element, {onStatus, onLines})  -> handle with .close()
 *       Renders the instance console into element: an xterm.js terminal, or a <pre> when
 *       xterm.js cannot load. Reconnects the same way and resumes with after=<last seq>, so no
 *       line is shown twice or skipped. onStatus({state: "waiting"|"live"|"exited"|"gone"|
 *       "refused", exit_code, message}); element.dataset.consoleState mirrors the state.
 *       element also gets a "hyperlive:lines" event per batch ({detail: {lines}}).
 *       handle.lastSeq is the seq of the last line shown (-1: none).
 *
 *   HyperLive.attachConsoles(root)  attaches a console to every [data-console-url] in root
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

  function preView(element) {
    var pre = document.createElement("pre");
    pre.className = "console-lines";
    element.appendChild(pre);
    return {
      write: function (line) {
        var row = document.createElement("span");
        row.className = line.stream === "stderr" ? "stderr" : "stdout";
        row.dataset.seq = line.seq;
        row.textContent = line.text + "\n";
        pre.appendChild(row);
        while (pre.childNodes.length > PRE_MAX_LINES) pre.removeChild(pre.firstChild);
        pre.scrollTop = pre.scrollHeight;
      },
      note: function (text) {
        this.write({ seq: -1, stream: "note", text: text });
      },
    };
  }

  function terminalView(element) {
    var terminal = new window.Terminal({
      convertEol: true,
      disableStdin: true,
      scrollback: 5000,
      rows: Number(element.dataset.consoleRows) || 24,
      fontSize: 13,
    });
    terminal.open(element);
    return {
      terminal: terminal,
      write: function (line) {
        var text = line.text.replace(/\r?$/, "");
        terminal.write(line.stream === "stderr" ? "\x1b[31m" + text + "\x1b[0m\r\n" : text + "\r\n");
      },
      note: function (text) {
        terminal.write("\x1b[2m" + text + "\x1b[0m\r\n");
      },
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
        if (shown.length) {
          element.dispatchEvent(new CustomEvent("hyperlive:lines", { detail: { lines: shown } }));
          if (options.onLines) options.onLines(shown);
        }
      } else if (message.type === "truncated") {
        if (message.first_seq > handle.lastSeq + 1) {
          view.note("[earlier output not shown; from line " + message.first_seq + "]");
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

  window.HyperLive = { events: events, console: consoleStream, attachConsoles: attachConsoles };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      attachConsoles(document);
    });
  } else {
    attachConsoles(document);
  }
})();
