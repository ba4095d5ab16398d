// The Node.js peer for `make bench`: a broadcaster of the kind many teams
// write by hand on the `ws` package. Clients speak the subset of our client
// protocol the bench uses ({"op":"subscribe","channels":[...],"id":N});
// messages arrive as JSON lines on a TCP feed port and go to every client
// subscribed to their "channel".
//   node ws-peer.js --port 8081 --feed-port 8082
'use strict';
const net = require('net');
const http = require('http');
const { WebSocketServer } = require('ws');

function arg(name, def) {
  const i = process.argv.indexOf('--' + name);
  return i > 0 ? process.argv[i + 1] : def;
}
const port = Number(arg('port', 8081));
const feedPort = Number(arg('feed-port', 8082));
const host = arg('host', '127.0.0.1');

const subs = new Map(); // channel -> Set of sockets

const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ server, perMessageDeflate: false });
wss.on('connection', (ws) => {
  const mine = new Set();
  ws.on('message', (data) => {
    let m;
    try { m = JSON.parse(data); } catch (e) {
      ws.send(JSON.stringify({ type: 'error', code: 'bad_json', message: 'not JSON' }));
      return;
    }
    if ((m.op === 'subscribe' || m.op === 'unsubscribe') && Array.isArray(m.channels)) {
      for (const ch of m.channels) {
        if (m.op === 'subscribe') {
          if (!subs.has(ch)) subs.set(ch, new Set());
          subs.get(ch).add(ws);
          mine.add(ch);
        } else if (subs.has(ch)) {
          subs.get(ch).delete(ws);
          mine.delete(ch);
        }
      }
      ws.send(JSON.stringify({ type: m.op === 'subscribe' ? 'subscribed' : 'unsubscribed', channels: m.channels, id: m.id }));
    } else if (m.op === 'ping') {
      ws.send('{"type":"pong"}');
    }
  });
  ws.on('close', () => { for (const ch of mine) { const s = subs.get(ch); if (s) s.delete(ws); } });
  ws.on('error', () => {});
});
server.listen(port, host);

function broadcast(line) {
  let m;
  try { m = JSON.parse(line); } catch (e) { return; }
  const s = subs.get(m.channel);
  if (!s) return;
  const buf = Buffer.from(line);
  for (const ws of s) {
    if (ws.readyState === 1) ws.send(buf, { binary: false });
  }
}

net.createServer((sock) => {
  let rest = '';
  sock.setEncoding('utf8');
  sock.on('data', (chunk) => {
    const parts = (rest + chunk).split('\n');
    rest = parts.pop();
    for (const line of parts) if (line) broadcast(line);
  });
  sock.on('error', () => {});
}).listen(feedPort, host);

process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
console.error(`ws-peer: ws://${host}:${port}/ feed tcp://${host}:${feedPort}`);
