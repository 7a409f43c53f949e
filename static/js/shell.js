/*
 * Shells in running instances (the app page's "Shell" buttons): an xterm.js terminal in a dialog,
 * on the exec WebSocket (contract: portal/consumers.py, ExecConsumer). Keys go out as
 * {"type": "input"}, the terminal's size as {"type": "resize"} whenever the dialog's size changes
 * it; output arrives base64-encoded and is written as bytes. Once xterm.js has processed
 * written bytes (term.write's callback), they are acked ({"type": "ack", "bytes": total
 * written}) every ACK_BYTES or ACK_DELAY_MS: the portal lets the shell run ahead of the terminal
 * by one window only, so a busy tab holds the shell back. A refusal (a viewer, an instance not
 * running) and the exit code are shown in the dialog's status line.
 */
(() => {
  "use strict";
  const FONT_SIZE = 14;
  const FONT_FAMILY = "ui-monospace, 'DejaVu Sans Mono', monospace";
  const ACK_BYTES = 16 * 1024;
  const ACK_DELAY_MS = 50;
  let current = null;

  function socketUrl(path, rows, cols) {
    const url = new URL(path, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("rows", String(rows));
    url.searchParams.set("cols", String(cols));
    return url.toString();
  }

  // Rows and columns that fit the element, from the width and height of one character cell.
  function measure(element) {
    const probe = document.createElement("span");
    probe.style.cssText = `position:absolute;visibility:hidden;white-space:pre;font-size:${FONT_SIZE}px;font-family:${FONT_FAMILY};line-height:normal`;
    probe.textContent = "W".repeat(50);
    document.body.appendChild(probe);
    const cellWidth = probe.getBoundingClientRect().width / 50;
    const cellHeight = Math.ceil(FONT_SIZE * 1.2);
    probe.remove();
    const box = element.getBoundingClientRect();
    return {
      cols: Math.max(20, Math.min(1000, Math.floor((box.width - 16) / cellWidth))),
      rows: Math.max(5, Math.min(1000, Math.floor((box.height - 8) / cellHeight))),
    };
  }

  function bytesOf(base64) {
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  async function openShell(button) {
    const dialog = document.getElementById("shell-dialog");
    const screen = dialog.querySelector("[data-shell-screen]");
    const status = dialog.querySelector("[data-shell-status]");
    dialog.querySelector("[data-shell-title]").textContent = button.dataset.shellTitle || "Shell";
    status.textContent = "Connecting…";
    status.dataset.state = "connecting";
    screen.textContent = "";
    dialog.showModal();
    if (!(await window.HyperLive.loadXterm())) {
      status.textContent = "The terminal could not be loaded.";
      return;
    }
    const size = measure(screen);
    const term = new window.Terminal({ cols: size.cols, rows: size.rows, fontSize: FONT_SIZE, fontFamily: FONT_FAMILY, cursorBlink: true });
    term.open(screen);
    const socket = new WebSocket(socketUrl(button.dataset.shellUrl, size.rows, size.cols));
    const send = (message) => { if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message)); };
    const shell = { term, socket, resize: null };
    let written = 0;
    let acked = 0;
    let ackTimer = null;
    const ack = () => {
      window.clearTimeout(ackTimer);
      ackTimer = null;
      if (written > acked) {
        acked = written;
        send({ type: "ack", bytes: written });
      }
    };
    const wrote = (size) => {
      written += size;
      if (written - acked >= ACK_BYTES) ack();
      else if (ackTimer === null) ackTimer = window.setTimeout(ack, ACK_DELAY_MS);
    };
    current = shell;
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "opened") {
        status.textContent = "Connected: this shell runs in the instance's container.";
        status.dataset.state = "open";
        term.focus();
      } else if (message.type === "output") {
        const bytes = bytesOf(message.data);
        term.write(bytes, () => wrote(bytes.length));
      } else if (message.type === "exit") {
        status.textContent = `The shell exited with code ${message.exit_code}.`;
        status.dataset.state = "exited";
        status.dataset.exitCode = String(message.exit_code);
      } else if (message.type === "error") {
        status.textContent = message.message;
        status.dataset.state = "refused";
      }
    };
    socket.onclose = (event) => {
      if (status.dataset.state === "open" || status.dataset.state === "connecting") {
        status.textContent = `The shell's connection closed (${event.code}).`;
        status.dataset.state = "closed";
      }
    };
    term.onData((data) => send({ type: "input", data }));
    term.onResize(({ cols, rows }) => send({ type: "resize", rows, cols }));
    shell.resize = () => {
      const fitted = measure(screen);
      if (fitted.cols !== term.cols || fitted.rows !== term.rows) term.resize(fitted.cols, fitted.rows);
    };
    window.addEventListener("resize", shell.resize);
    const ping = window.setInterval(() => send({ type: "ping" }), 20000);
    dialog.addEventListener("close", () => {
      window.clearInterval(ping);
      window.clearTimeout(ackTimer);
      window.removeEventListener("resize", shell.resize);
      socket.close();
      term.dispose();
      if (current === shell) current = null;
    }, { once: true });
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-shell-url]");
    if (button) openShell(button);
  });
  window.HyperShell = { current: () => current };
})();
