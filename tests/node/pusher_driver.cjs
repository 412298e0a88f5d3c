// Drives pusher-js (the real library, from npm) in Node for Clarion's tests.
//
// Reads one JSON command per line on stdin and writes one JSON report per line on
// stdout; the test (tests/support/pusherjs.py) decides what to do next from the reports.
//
// Commands: {"op": "connect", "as": NAME, "key", "port", "auth"?, "userAuth"?, "options"?}
//           {"op": "subscribe" | "unsubscribe", "as", "channel"}
//           {"op": "trigger", "as", "channel", "event", "data"}
//           {"op": "signin" | "disconnect" | "ping", "as"}
//           {"op": "members", "as", "channel"}
// Reports:  {"as", "state": previous -> current, "socket_id"?}
//           {"as", "channel", "event", "data"}               (every event on a channel)
//           {"as", "channel", "of": event, "sent_by": user_id}  (an event with a user_id)
//           {"as", "error": ...}                               (connection errors)
//           {"as", "user_event", "data"}                       (sent to its signed-in user)
//           {"as", "members": {...}}, {"as", "done": op}
"use strict";

const Pusher = require("pusher-js");
const readline = require("readline");

const clients = new Map();

function report(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

function connect(command) {
  const name = command.as;
  const options = Object.assign(
    {
      wsHost: "127.0.0.1",
      wsPort: command.port,
      forceTLS: false,
      enabledTransports: ["ws"],
      disableStats: true,
      cluster: "clarion",
      activityTimeout: 120000,
      pongTimeout: 30000,
    },
    command.options || {},
  );
  if (command.auth) {
    options.channelAuthorization = { endpoint: command.auth, transport: "ajax" };
  }
  if (command.userAuth) {
    options.userAuthentication = { endpoint: command.userAuth, transport: "ajax" };
  }
  const client = new Pusher(command.key, options);
  clients.set(name, client);
  client.connection.bind("state_change", (states) => {
    report({ as: name, state: `${states.previous} -> ${states.current}`, socket_id: client.connection.socket_id });
  });
  client.connection.bind("error", (error) => {
    const data = error && error.error && error.error.data ? error.error.data : error && error.data;
    report({ as: name, error: data || String(error && error.type) });
  });
  // What the backend sends to the signed-in user (send_to_user).
  client.user.bind_global((event, data) => report({ as: name, user_event: event, data }));
  // A channel's global callbacks are not given an event's metadata: its user_id is
  // reported from the connection's messages.
  client.connection.bind("message", (event) => {
    if (event.user_id) report({ as: name, channel: event.channel, sent_by: event.user_id, of: event.event });
    if (event.event === "pusher:signin_success") report({ as: name, signed_in: true });
    if (event.event === "pusher:pong") report({ as: name, pong: true });
    if (event.event === "pusher_internal:subscription_succeeded") report({ as: name, subscribed: event.channel });
  });
}

function subscribe(command) {
  const client = clients.get(command.as);
  const channel = client.subscribe(command.channel);
  channel.bind_global((event, data) => {
    const message = { as: command.as, channel: command.channel, event, data };
    if (event === "pusher:subscription_succeeded" && data && data.members) {
      message.data = { count: data.count, ids: Object.keys(data.members).sort(), me: data.me };
    }
    if ((event === "pusher:member_added" || event === "pusher:member_removed") && data) {
      message.data = { id: data.id, info: data.info };
    }
    report(message);
  });
}

function run(command) {
  const client = clients.get(command.as);
  switch (command.op) {
    case "connect":
      return connect(command);
    case "subscribe":
      return subscribe(command);
    case "unsubscribe":
      return client.unsubscribe(command.channel);
    case "trigger": {
      const sent = client.channel(command.channel).trigger(command.event, command.data);
      return report({ as: command.as, triggered: sent });
    }
    case "signin":
      return client.signin();
    case "disconnect":
      return client.disconnect();
    case "members": {
      const members = client.channel(command.channel).members;
      const ids = [];
      members.each((member) => ids.push(member.id));
      return report({ as: command.as, members: { count: members.count, ids: ids.sort() } });
    }
    case "exit":
      for (const each of clients.values()) each.disconnect();
      return setTimeout(() => process.exit(0), 50);
    default:
      return report({ as: command.as, unknown: command.op });
  }
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  try {
    run(JSON.parse(line));
  } catch (error) {
    report({ failed: String(error && error.stack ? error.stack : error) });
  }
});
lines.on("close", () => process.exit(0));
report({ ready: true });
