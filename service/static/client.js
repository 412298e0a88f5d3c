// Clarion's browser client: a plain ES module, no build step, no dependency.
//
//   import { Clarion } from "http://127.0.0.1:8000/client.js";
//   const client = new Clarion("ws://127.0.0.1:8000/ws");
//   client.subscribe("news", (data) => console.log(data));
//   const { offset } = await client.publish("news", { text: "hi" });
//
// What it does for you (docs/protocol.md is the reference):
//
// - Requests carry ids; every call returns a promise of its reply, and a refusal is a
//   `ClarionError` with the server's numeric `code` and its `message`.
// - A server frame holds one object, or an array of them (coalescing): both are handled.
// - Each subscription remembers the `offset` and `epoch` of the last message it saw.
//   After a reconnect it subscribes again with `since`, so that the server replays what
//   was missed; a message is delivered once and in order (an offset already seen is
//   skipped).
// - The connection comes back by itself after the server shut down (1001), a network
//   failure (1006), a slow-consumer close (4000) or a missed pong (4002), waiting a
//   random time under a capped exponential bound between attempts ("full jitter").
//   After 4001 (token expired) it asks `getToken()` for a new token first.
// - The server's `{"type":"ping"}` is answered with `{"type":"pong"}`.
// - Requests made while disconnected wait for the connection, up to `requestTimeoutMs`.
//
// It runs in browsers and in any runtime with WebSocket, EventTarget and CustomEvent
// (Node 22+, Deno, Bun).

/** How long a request may wait for its reply (and for a connection), by default. */
const REQUEST_TIMEOUT_MS = 10_000;
/** The first reconnect waits up to this long; each failed attempt doubles the bound... */
const MIN_RECONNECT_DELAY_MS = 500;
/** ...up to this cap. */
const MAX_RECONNECT_DELAY_MS = 30_000;
/** With nothing received for this long, the client pings the server to check the line. */
const PING_INTERVAL_MS = 30_000;
/** A token that expires within this long is renewed with `getToken()` before connecting. */
const TOKEN_MARGIN_MS = 5_000;

/** The subprotocol the server selects; a token travels as a second one, `bearer.<token>`. */
const SUBPROTOCOL = "clarion";

/**
 * Error codes: the server's (the "Error codes" table of docs/protocol.md), then the client's own
 * (900 and up, never sent by a server).
 */
export const ErrorCode = Object.freeze({
  CONFIG_ERROR: 10,
  BAD_JSON: 100,
  BAD_MESSAGE: 101,
  UNKNOWN_OP: 102,
  REQUEST_TOO_LARGE: 103,
  ROUTE_NOT_FOUND: 104,
  METHOD_NOT_ALLOWED: 105,
  UNAUTHORIZED: 106,
  UPGRADE_REQUIRED: 107,
  UNAUTHENTICATED: 108,
  INVALID_TOKEN: 109,
  TOKEN_EXPIRED: 110,
  ORIGIN_NOT_ALLOWED: 111,
  NODE_FULL: 112,
  ADDRESS_FULL: 113,
  RATE_LIMITED: 114,
  INVALID_CHANNEL_NAME: 200,
  CHANNEL_NOT_FOUND: 201,
  PERMISSION_DENIED: 202,
  ALREADY_SUBSCRIBED: 203,
  NOT_SUBSCRIBED: 204,
  MESSAGE_TOO_LARGE: 205,
  PRESENCE_DISABLED: 206,
  TOO_MANY_SUBSCRIPTIONS: 207,
  INVALID_DATA: 208,
  SERVER_CLOSING: 300,
  BROKER_UNAVAILABLE: 301,
  /** No reply (or no connection) within `requestTimeoutMs`. */
  TIMEOUT: 900,
  /** The connection dropped before the reply came: the request may or may not have run. */
  DISCONNECTED: 901,
  /**
   * The WebSocket could not be opened: the server is unreachable or refused the
   * handshake. A browser tells neither which nor why (the server's log does): an origin
   * not allowed (111), a missing or bad token (108-110), a full node (112, 113).
   */
  CONNECTION_FAILED: 902,
  /** `close()` was called (or `unsubscribe()`, before the server confirmed). */
  CLOSED: 903,
  /** The server closed the connection with a code after which the client gives up. */
  CONNECTION_ENDED: 904,
});

const CODE_NAMES = new Map(Object.entries(ErrorCode).map(([name, code]) => [code, name]));

/** Close codes after which the client reconnects (and 4001, with a new token). */
const RECONNECT_CLOSE_CODES = new Set([
  1001, // the server is shutting down
  1005, // closed without a code (some proxies)
  1006, // the connection dropped, or the handshake failed
  1011, // an unexpected server error
  1012, // service restart (proxies)
  1013, // try again later (proxies)
  1014, // bad gateway (proxies)
  4000, // slow consumer
  4002, // no pong (or, closed by this client, no reply to its own ping)
]);
const CLOSE_TOKEN_EXPIRED = 4001;
/** Refusals worth sending a subscribe again for, on the same connection, after a pause. */
const TRANSIENT_CODES = new Set([ErrorCode.BROKER_UNAVAILABLE]);

/**
 * An error from Clarion: a refused request, an ended subscription, a failed connection.
 *
 * `code` is a number (see `ErrorCode`) and `codeName` its name, as "CHANNEL_NOT_FOUND";
 * `closeCode` is set when a WebSocket close caused it, `channel` when a channel did.
 */
export class ClarionError extends Error {
  /**
   * @param {number} code
   * @param {string} message
   * @param {{closeCode?: number, channel?: string, cause?: unknown}} [details]
   */
  constructor(code, message, { closeCode, channel, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "ClarionError";
    this.code = code;
    this.codeName = CODE_NAMES.get(code) ?? "UNKNOWN";
    this.closeCode = closeCode;
    this.channel = channel;
  }
}

/**
 * One subscription, as `Clarion.subscribe` returns it.
 *
 * `ready` resolves with `{channel, offset, epoch}` once the server confirmed the
 * subscription, and rejects with a `ClarionError` if it refused it.
 */
export class Subscription {
  #state;

  /** @param {ChannelState} state (internal) */
  constructor(state) {
    this.#state = state;
  }

  /** @returns {string} */
  get channel() {
    return this.#state.channel;
  }

  /** @returns {Promise<{channel: string, offset: number, epoch: string}>} */
  get ready() {
    return this.#state.ready;
  }

  /** Whether the subscription still runs: false after `unsubscribe()` or its end. */
  get active() {
    return this.#state.active;
  }

  /**
   * `{offset, epoch}` of the last message delivered (or of where the subscription
   * started), or null before the server confirmed it.
   */
  get position() {
    const { offset, epoch } = this.#state;
    return epoch === null ? null : { offset, epoch };
  }

  /** Stop receiving the channel's messages. Idempotent. */
  unsubscribe() {
    this.#state.leave();
  }
}

/**
 * A connection to a Clarion server, which comes back by itself.
 *
 * Events (`addEventListener`, or `on(type, listener)`, which passes the event's detail):
 * - `state`: `{state, previous, closeCode?, reason?, error?}`, where `state` is
 *   `connecting`, `connected`, `disconnected` (it will try again) or `closed` (for
 *   good: `close()` was called, or the server ended the connection: see `error`).
 * - `error`: `{error}`, for a problem no promise or callback reports (a failed
 *   `getToken()`, an error frame for a request nobody waits for any more).
 */
export class Clarion extends EventTarget {
  #url;
  #options;
  #token;
  /** @type {WebSocket | null} */
  #socket = null;
  #state = "idle";
  /** Failed attempts since the last connection opened (the backoff's exponent). */
  #attempt = 0;
  #nextId = 0;
  /** Requests sent on the current connection, by id. @type {Map<number, Request>} */
  #pending = new Map();
  /** Requests waiting for a connection, in call order. @type {Request[]} */
  #waiting = [];
  /** @type {Map<string, ChannelState>} */
  #channels = new Map();
  #reconnectTimer = null;
  #pingTimer = null;
  #lastReceived = 0;
  /** Why the last connection ended or failed: requests that time out waiting say it. */
  #lastError = null;
  /** The server closed with 4001: the next connection needs a new token. */
  #tokenExpired = false;
  #decoder = new TextDecoder();

  /**
   * @param {string | URL} [url] The WebSocket endpoint (`ws://host:8000/ws`); an
   *   `http(s)://` or a relative URL works too. By default, `/ws` on the server this
   *   module was loaded from.
   * @param {object} [options]
   * @param {string} [options.token] A JWT, sent in the handshake (as a subprotocol).
   * @param {() => Promise<string> | string} [options.getToken] Gives a new token: called
   *   before connecting without one, when the current one has expired (by its `exp`),
   *   and after the server closed with 4001.
   * @param {number} [options.requestTimeoutMs] How long a request may wait (10 s).
   * @param {number} [options.minReconnectDelayMs] The first reconnect's bound (500 ms).
   * @param {number} [options.maxReconnectDelayMs] The largest reconnect bound (30 s).
   * @param {number} [options.pingIntervalMs] Ping a connection quiet for this long and
   *   reconnect if it does not answer (30 s); 0 turns it off.
   */
  constructor(url, options = {}) {
    super();
    this.#url = websocketURL(url);
    this.#options = {
      getToken: options.getToken ?? null,
      requestTimeoutMs: options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
      minReconnectDelayMs: options.minReconnectDelayMs ?? MIN_RECONNECT_DELAY_MS,
      maxReconnectDelayMs: options.maxReconnectDelayMs ?? MAX_RECONNECT_DELAY_MS,
      pingIntervalMs: options.pingIntervalMs ?? PING_INTERVAL_MS,
    };
    this.#token = options.token ?? null;
    // Connect on the next microtask, so that listeners added right after construction
    // see the first "connecting".
    queueMicrotask(() => this.#connect());
  }

  /** The WebSocket URL the client connects to. */
  get url() {
    return this.#url;
  }

  /** `idle` (before the first attempt), `connecting`, `connected`, `disconnected` or `closed`. */
  get state() {
    return this.#state;
  }

  /**
   * Call `listener` with the detail of each `type` event; return a function that stops.
   * @param {"state" | "error"} type
   * @param {(detail: object) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    const wrapped = (event) => listener(event.detail);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  /**
   * Subscribe to `channel`: `onMessage(data, message)` gets each message once and in
   * order (`message` is the whole frame, `{type, channel, offset, data}`).
   *
   * @param {string} channel
   * @param {(data: any, message: object) => void} onMessage
   * @param {object} [options]
   * @param {(info: {recovered: boolean, offset: number, epoch: string}) => void} [options.onResubscribed]
   *   After a reconnect. `recovered: true`: the missed messages follow, delivered as
   *   usual. `false`: they cannot be replayed (the epoch changed, or they are no longer
   *   kept): reload your state some other way; live messages follow.
   * @param {(gap: {first: number, last: number}) => void} [options.onGap] Messages
   *   `first` to `last` were dropped by the channel's slow-consumer policy.
   * @param {(restart: {epoch: string}) => void} [options.onRestart] The channel's stream
   *   started again (Redis lost it): offsets begin again at 1.
   * @param {(error: ClarionError) => void} [options.onUnsubscribed] The server refused
   *   or ended the subscription (a configuration reload, see `error.code`): it is over.
   * @param {(info: {client: string, user: string | null}) => void} [options.onJoin]
   * @param {(info: {client: string, user: string | null}) => void} [options.onLeave]
   * @param {string} [options.token] A subscription token, for a `private` channel.
   * @returns {Subscription}
   * @throws {ClarionError} CLOSED after `close()`; ALREADY_SUBSCRIBED while this client
   *   holds a subscription to `channel` (share it, or unsubscribe first).
   */
  subscribe(channel, onMessage, options = {}) {
    checkChannel(channel);
    if (typeof onMessage !== "function") throw new TypeError("onMessage must be a function");
    if (this.#state === "closed") throw closedError();
    if (this.#channels.has(channel)) {
      const message = `this client is already subscribed to ${JSON.stringify(channel)}`;
      throw new ClarionError(ErrorCode.ALREADY_SUBSCRIBED, message, { channel });
    }
    const state = new ChannelState(channel, onMessage, options, () => this.#leave(state));
    this.#channels.set(channel, state);
    if (this.#state === "connected") this.#sendSubscribe(state);
    return new Subscription(state);
  }

  /**
   * Publish `data` (any JSON value) on `channel`. With `idempotencyKey`, a publish
   * retried with the same key is published once (`duplicate: true` on a retry).
   * @param {string} channel
   * @param {any} data
   * @param {{idempotencyKey?: string}} [options]
   * @returns {Promise<{channel: string, offset: number, epoch: string, duplicate: boolean}>}
   */
  async publish(channel, data, { idempotencyKey } = {}) {
    checkChannel(channel);
    if (data === undefined) throw new TypeError("data is required (null is a value)");
    const request = { type: "publish", channel, data, idempotency_key: idempotencyKey };
    const { offset, epoch, duplicate = false } = await this.#request(request);
    return { channel, offset, epoch, duplicate };
  }

  /**
   * The channel's kept messages, oldest first: the newest `limit`, or with `since`, the
   * first `limit` after that offset (all of them without `limit`). Reading needs the
   * access a subscribe needs: for a private channel, pass its subscription `token`.
   * @param {string} channel
   * @param {{limit?: number, since?: number, token?: string}} [query]
   * @returns {Promise<{channel: string, offset: number, epoch: string, messages: {offset: number, data: any}[]}>}
   */
  async history(channel, { limit, since, token } = {}) {
    checkChannel(channel);
    const reply = await this.#request({ type: "history", channel, limit, since, token });
    return { channel, offset: reply.offset, epoch: reply.epoch, messages: reply.messages };
  }

  /**
   * The clients subscribed to `channel`, on every node (its rule needs `presence`).
   * Asking needs the access a subscribe needs: for a private channel, pass its `token`.
   * @param {string} channel
   * @param {{token?: string}} [options]
   * @returns {Promise<{client: string, user: string | null}[]>}
   */
  async presence(channel, { token } = {}) {
    checkChannel(channel);
    return (await this.#request({ type: "presence", channel, token })).clients;
  }

  /**
   * Extend the connection with a newer token of the same user; reconnects use it too.
   * While disconnected, the token is kept for the next connection.
   */
  async refresh(token) {
    if (typeof token !== "string" || !token) throw new TypeError("token must be a string");
    if (this.#state !== "connected") {
      this.#token = token;
      this.#tokenExpired = false;
      return;
    }
    await this.#request({ type: "refresh", token });
    this.#token = token;
    this.#tokenExpired = false;
  }

  /** Ask the server for a reply; resolve with the round trip in milliseconds. */
  async ping() {
    const start = performance.now();
    await this.#request({ type: "ping" });
    return performance.now() - start;
  }

  /**
   * Close the connection for good, without reconnecting: waiting requests reject with
   * CLOSED, and subscriptions end quietly. Idempotent.
   */
  close() {
    if (this.#state === "closed") return;
    const socket = this.#socket;
    this.#detach();
    socket?.close(1000);
    this.#finish(closedError(), { quiet: true });
  }

  // Connection --------------------------------------------------------------------------

  async #connect() {
    if (this.#state === "closed") return;
    this.#setState("connecting");
    let token;
    try {
      token = await this.#tokenForConnection();
    } catch (cause) {
      if (this.#state === "closed") return;
      const error = new ClarionError(ErrorCode.CONNECTION_FAILED, `getToken() failed: ${cause}`, {
        cause,
      });
      this.#emitError(error);
      this.#disconnected({ error });
      return;
    }
    if (this.#state === "closed") return; // close() was called during getToken()
    let socket;
    try {
      socket = new WebSocket(this.#url, token ? [SUBPROTOCOL, `bearer.${token}`] : [SUBPROTOCOL]);
    } catch (cause) {
      // A malformed URL, or a token with characters a subprotocol cannot hold: another
      // attempt would fail the same way.
      const message = `cannot open ${this.#url}: ${cause.message}`;
      this.#finish(new ClarionError(ErrorCode.CONNECTION_FAILED, message, { cause }));
      return;
    }
    socket.binaryType = "arraybuffer";
    this.#socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.#onOpen();
    };
    socket.onmessage = (event) => this.#onFrame(event.data);
    socket.onclose = (event) => this.#onClose(event.code, event.reason, opened);
    socket.onerror = () => {}; // "close" always follows, and handles it
  }

  async #tokenForConnection() {
    const { getToken } = this.#options;
    if (getToken && (this.#token === null || this.#tokenExpired || expiresSoon(this.#token))) {
      const token = await getToken();
      if (typeof token !== "string" || !token) throw new TypeError("it gave no token");
      this.#token = token;
      this.#tokenExpired = false;
    }
    return this.#token;
  }

  #onOpen() {
    this.#attempt = 0;
    this.#lastError = null;
    this.#lastReceived = performance.now();
    this.#setState("connected");
    // Subscriptions first (they are older), then the requests that waited, in order.
    for (const state of this.#channels.values()) this.#sendSubscribe(state);
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const request of waiting) this.#send(request);
    this.#watch();
  }

  #onClose(closeCode, reason, opened) {
    this.#detach();
    if (this.#state === "closed") return;
    const how = `with ${closeCode}${reason ? ` (${reason})` : ""}`;
    if (!opened) {
      const message =
        `could not connect to ${this.#url}: the server is unreachable or refused the ` +
        "handshake (its log says why: an origin not in server.allowed_origins, a " +
        "missing or invalid token, a full node)";
      const error = new ClarionError(ErrorCode.CONNECTION_FAILED, message, { closeCode });
      this.#disconnected({ closeCode, reason, error });
    } else if (closeCode === CLOSE_TOKEN_EXPIRED && this.#options.getToken) {
      this.#tokenExpired = true;
      const message = "the token expired (4001): reconnecting with a new one";
      const error = new ClarionError(ErrorCode.TOKEN_EXPIRED, message, { closeCode });
      this.#disconnected({ closeCode, reason, error });
    } else if (closeCode === CLOSE_TOKEN_EXPIRED) {
      const message = "the token expired (4001), and there is no getToken() to renew it";
      this.#finish(new ClarionError(ErrorCode.TOKEN_EXPIRED, message, { closeCode }));
    } else if (RECONNECT_CLOSE_CODES.has(closeCode)) {
      const message = `the connection closed ${how}: reconnecting`;
      const error = new ClarionError(ErrorCode.DISCONNECTED, message, { closeCode });
      this.#disconnected({ closeCode, reason, error });
    } else {
      const message = `the server closed the connection ${how}`;
      this.#finish(new ClarionError(ErrorCode.CONNECTION_ENDED, message, { closeCode }));
    }
  }

  /** Forget the current socket: its requests fail, its subscriptions wait to resubscribe. */
  #detach() {
    clearTimeout(this.#pingTimer);
    this.#pingTimer = null;
    const socket = this.#socket;
    if (socket !== null) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      this.#socket = null;
    }
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    const lost = new ClarionError(
      ErrorCode.DISCONNECTED,
      "the connection closed before the reply: the request may or may not have been done",
    );
    for (const request of pending) request.fail(lost);
    for (const state of this.#channels.values()) state.phase = "idle";
  }

  /** Say `disconnected` (with `details`), and try again after the backoff. */
  #disconnected(details) {
    this.#lastError = details.error;
    this.#setState("disconnected", details);
    // Full jitter: wait a random time between 0 and a bound that doubles with each
    // failed attempt, up to the cap, so that the clients of a node that went away come
    // back spread out, not all at once.
    const { minReconnectDelayMs: min, maxReconnectDelayMs: max } = this.#options;
    const bound = Math.min(max, min * 2 ** Math.min(this.#attempt, 30));
    this.#attempt += 1;
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      this.#connect();
    }, Math.random() * bound);
  }

  /** End for good: the state becomes `closed`; requests and subscriptions end with `error`. */
  #finish(error, { quiet = false } = {}) {
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#detach();
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const request of waiting) request.fail(error);
    const channels = [...this.#channels.values()];
    this.#channels.clear();
    for (const state of channels) state.end(error, { notify: !quiet });
    this.#setState("closed", quiet ? {} : { closeCode: error.closeCode, error });
  }

  #setState(state, details = {}) {
    const previous = this.#state;
    if (previous === state) return;
    this.#state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, previous, ...details } }));
  }

  #emitError(error) {
    this.dispatchEvent(new CustomEvent("error", { detail: { error } }));
  }

  /**
   * Watch a quiet connection: after `pingIntervalMs` with nothing received, send a ping,
   * and without its reply within `requestTimeoutMs` take the connection for dead and
   * reconnect (a browser may not notice a dead TCP connection for many minutes). The
   * server's own pings, answered, keep this quiet.
   */
  #watch() {
    const interval = this.#options.pingIntervalMs;
    if (!interval) return;
    const due = this.#lastReceived + interval - performance.now();
    this.#pingTimer = setTimeout(() => {
      this.#pingTimer = null;
      if (performance.now() - this.#lastReceived < interval) {
        this.#watch();
        return;
      }
      const socket = this.#socket;
      const request = new Request({ type: "ping" }, { reply: () => this.#watch(), fail() {} });
      request.startTimer(this.#options.requestTimeoutMs, () => {
        this.#pending.delete(request.id);
        if (this.#socket !== socket) return;
        socket.close(4002);
        this.#onClose(4002, "no reply to the client's ping", true);
      });
      this.#send(request);
    }, Math.max(due, 0));
  }

  // Frames ------------------------------------------------------------------------------

  #onFrame(data) {
    this.#lastReceived = performance.now();
    let parsed;
    try {
      parsed = JSON.parse(typeof data === "string" ? data : this.#decoder.decode(data));
    } catch (cause) {
      const message = `the server sent a frame that is not JSON: ${cause.message}`;
      this.#emitError(new ClarionError(ErrorCode.BAD_JSON, message, { cause }));
      return;
    }
    // One object, or an array of several when the server coalesced them.
    for (const object of Array.isArray(parsed) ? parsed : [parsed]) {
      try {
        this.#dispatch(object);
      } catch (error) {
        // A callback threw: report it as uncaught, and go on with the other objects.
        report(error);
      }
    }
  }

  #dispatch(object) {
    const state = this.#channels.get(object.channel);
    switch (object.type) {
      case "reply":
      case "error": {
        const request = this.#pending.get(object.id);
        if (request === undefined) {
          // Nobody waits for it any more (a request that timed out).
          if (object.type === "error") this.#emitError(errorFromFrame(object));
          return;
        }
        this.#pending.delete(object.id);
        if (object.type === "reply") request.succeed(object);
        else request.fail(errorFromFrame(object));
        return;
      }
      case "message":
        state?.deliver(object);
        return;
      case "ping":
        this.#socket?.send('{"type":"pong"}');
        return;
      case "gap":
        state?.notify("onGap", { first: object.first, last: object.last });
        return;
      case "restart":
        state?.restart(object.epoch);
        return;
      case "join":
        state?.notify("onJoin", object.info);
        return;
      case "leave":
        state?.notify("onLeave", object.info);
        return;
      case "unsubscribed":
        if (state !== undefined) {
          this.#channels.delete(state.channel);
          state.end(errorFromFrame(object));
        }
        return;
      default:
      // A frame this client does not know (from a newer server): ignore it.
    }
  }

  // Requests ----------------------------------------------------------------------------

  /** Send `frame` as a request, now or once connected; resolve with its reply. */
  #request(frame) {
    if (this.#state === "closed") return Promise.reject(closedError());
    return new Promise((resolve, reject) => {
      const request = new Request(frame, { reply: resolve, fail: reject });
      const ms = this.#options.requestTimeoutMs;
      request.startTimer(ms, () => {
        if (request.id !== null) {
          this.#pending.delete(request.id);
          reject(new ClarionError(ErrorCode.TIMEOUT, `no reply within ${ms} ms`));
          return;
        }
        // Never sent: say why there was no connection, if we know.
        this.#waiting = this.#waiting.filter((other) => other !== request);
        const last = this.#lastError;
        const code = last?.code === ErrorCode.CONNECTION_FAILED ? last.code : ErrorCode.TIMEOUT;
        const message = `not connected within ${ms} ms${last ? `: ${last.message}` : ""}`;
        reject(new ClarionError(code, message, { cause: last ?? undefined }));
      });
      if (this.#state === "connected") this.#send(request);
      else this.#waiting.push(request);
    });
  }

  #send(request) {
    this.#nextId += 1;
    request.id = this.#nextId;
    this.#pending.set(request.id, request);
    this.#socket.send(JSON.stringify({ ...request.frame, id: request.id }));
  }

  // Subscriptions -----------------------------------------------------------------------

  #sendSubscribe(state) {
    const frame = { type: "subscribe", channel: state.channel };
    // Resume after the last message seen, once there is one to resume from.
    const since = state.epoch === null ? undefined : { offset: state.offset, epoch: state.epoch };
    if (since !== undefined) frame.since = since;
    if (state.options.token) frame.token = state.options.token;
    state.phase = "subscribing";
    const socket = this.#socket;
    const retry = () => {
      if (state.active && state.phase === "subscribing" && this.#socket === socket) {
        this.#sendSubscribe(state);
      }
    };
    const request = new Request(frame, {
      reply: (reply) => state.confirm(reply, since),
      fail: (error) => {
        // A lost connection resubscribes on the next one.
        if (error.code === ErrorCode.DISCONNECTED || !state.active) return;
        if (TRANSIENT_CODES.has(error.code)) {
          const { minReconnectDelayMs: min, maxReconnectDelayMs: max } = this.#options;
          const bound = Math.min(max, min * 2 ** Math.min(state.retries, 30));
          state.retries += 1;
          setTimeout(retry, Math.random() * bound);
          return;
        }
        this.#channels.delete(state.channel);
        state.end(error);
      },
    });
    this.#send(request);
  }

  #leave(state) {
    if (!state.active) return;
    const sent = this.#state === "connected" && state.phase !== "idle";
    if (this.#channels.get(state.channel) === state) this.#channels.delete(state.channel);
    const message = "unsubscribe() was called before the server confirmed the subscription";
    state.end(new ClarionError(ErrorCode.CLOSED, message, { channel: state.channel }), {
      notify: false,
    });
    // The server runs a connection's requests in order, so an unsubscribe sent now comes
    // after the subscribe, even when its reply has not arrived yet.
    if (sent) {
      const frame = { type: "unsubscribe", channel: state.channel };
      this.#send(new Request(frame, { reply() {}, fail() {} }));
    }
  }
}

/** A request waiting for its reply: it settles once, by reply, failure or timeout. */
class Request {
  constructor(frame, { reply, fail }) {
    this.frame = frame;
    /** Its id once sent; null while it waits for a connection. */
    this.id = null;
    this.timer = null;
    this.settled = false;
    this.onReply = reply;
    this.onFail = fail;
  }

  /** Run `onTimeout` after `ms`, unless the request settled first. */
  startTimer(ms, onTimeout) {
    this.timer = setTimeout(() => {
      if (this.settled) return;
      this.settled = true;
      onTimeout();
    }, ms);
  }

  succeed(reply) {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timer);
    this.onReply(reply);
  }

  fail(error) {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timer);
    this.onFail(error);
  }
}

/** What the client knows of one subscription: its callbacks and its position. */
class ChannelState {
  constructor(channel, onMessage, options, leave) {
    this.channel = channel;
    this.onMessage = onMessage;
    this.options = options;
    this.leave = leave;
    this.active = true;
    /** idle (not sent on this connection), subscribing (waiting for the reply), subscribed. */
    this.phase = "idle";
    /** The offset of the last message delivered (or where it started), in `epoch`. */
    this.offset = 0;
    /** Null until the server first confirmed the subscription. */
    this.epoch = null;
    /** Transient refusals in a row (the backoff's exponent). */
    this.retries = 0;
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    // A caller may use only the callbacks and never look at `ready`: no unhandled
    // rejection for that.
    this.ready.catch(() => {});
  }

  /** The server confirmed; `since` is the position the subscribe asked to resume after. */
  confirm(reply, since) {
    if (!this.active) return;
    this.phase = "subscribed";
    this.retries = 0;
    if (since === undefined) {
      this.offset = reply.offset;
      this.epoch = reply.epoch;
      this.resolveReady({ channel: this.channel, offset: reply.offset, epoch: reply.epoch });
      return;
    }
    const recovered = reply.recovered === true;
    // Recovered: the missed messages follow. Not: they are gone, go on from here.
    if (!recovered) this.offset = reply.offset;
    this.epoch = reply.epoch;
    this.notify("onResubscribed", { recovered, offset: reply.offset, epoch: reply.epoch });
  }

  deliver(message) {
    // Before the reply, the channel's messages belong to an earlier subscription on this
    // connection; an offset already delivered is a duplicate.
    if (!this.active || this.phase !== "subscribed" || message.offset <= this.offset) return;
    this.offset = message.offset;
    this.onMessage(message.data, message);
  }

  restart(epoch) {
    this.epoch = epoch;
    this.offset = 0;
    this.notify("onRestart", { epoch });
  }

  notify(name, detail) {
    const callback = this.options[name];
    if (this.active && typeof callback === "function") callback(detail);
  }

  /** The subscription is over: `ready` rejects if still pending; `onUnsubscribed` hears. */
  end(error, { notify = true } = {}) {
    if (!this.active) return;
    if (notify) this.notify("onUnsubscribed", error);
    this.active = false;
    this.rejectReady(error);
  }
}

// Helpers --------------------------------------------------------------------------------

/**
 * The ws(s):// URL for `url`: absolute, relative to the page, or by default `ws` beside this
 * module (`/ws` of its server, or `/realtime/ws` when Clarion is mounted at `/realtime`).
 */
function websocketURL(url) {
  const base = globalThis.location?.href ?? import.meta.url;
  const resolved = url === undefined ? new URL("ws", import.meta.url) : new URL(url, base);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}

function checkChannel(channel) {
  if (typeof channel !== "string" || !channel) {
    throw new TypeError("channel must be a non-empty string");
  }
}

function closedError() {
  return new ClarionError(ErrorCode.CLOSED, "the client is closed");
}

function errorFromFrame(frame) {
  return new ClarionError(frame.code, frame.message, { channel: frame.channel });
}

/** Whether a JWT's `exp` (read, not verified: only the server can) is near or past. */
function expiresSoon(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const { exp } = JSON.parse(atob(payload));
    return typeof exp === "number" && exp * 1000 - Date.now() < TOKEN_MARGIN_MS;
  } catch {
    return false; // not a JWT this client can read: the server judges it
  }
}

/** Report an error a callback threw, as an uncaught one, without stopping the client. */
function report(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else setTimeout(() => { throw error; });
}
