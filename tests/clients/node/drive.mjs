// Drive the official @segment/analytics-node SDK against a tracking API; report what it sent.
//
//   node tests/clients/node/drive.mjs <base-url> <write-key>  < calls.json
//
// calls.json is the same JSON array of Segment-spec calls that drive_python.py takes. Each
// becomes one call of the SDK's public API; the client is then closed and flushed. Stdout
// gets one JSON report in drive_python.py's shape: {sdk, config, requests, errors}.
// `requests` comes from the SDK's own 'http_request'/'http_response' events. The exit
// status is 1 when any call failed to deliver.
//
// It lives beside package.json so that Node resolves the SDK from ./node_modules.
import { readFileSync } from 'node:fs'
import { Analytics } from '@segment/analytics-node'

const [baseUrl, writeKey] = process.argv.slice(2)
if (!baseUrl || !writeKey) {
  console.error('usage: node drive.mjs <base-url> <write-key> < calls.json')
  process.exit(2)
}
const calls = JSON.parse(readFileSync(0, 'utf8'))
const sdkVersion = JSON.parse(
  readFileSync(new URL('./node_modules/@segment/analytics-node/package.json', import.meta.url))
).version

// Fail fast and visibly: at most one retry, small time budgets, tiny flush interval.
const config = {
  writeKey,
  host: baseUrl,
  flushInterval: 50,
  maxRetries: 1,
  httpRequestTimeout: 10000,
  maxTotalBackoffDuration: 10,
  maxRateLimitDuration: 10,
}
const analytics = new Analytics(config)

const requests = []
const errors = []
analytics.on('http_request', (request) => {
  requests.push({
    method: request.method,
    url: request.url,
    headers: request.headers,
    gzipped: false,
    body: JSON.parse(request.body),
    status: null,
  })
})
analytics.on('http_response', (response) => {
  // Responses pair with requests by the exact body sent.
  const request = requests.find((r) => r.status === null && JSON.stringify(r.body) === response.body)
    ?? requests.find((r) => r.status === null)
  if (request) request.status = response.status
})
analytics.on('error', (error) => {
  errors.push({
    error: String(error.reason ?? error),
    messageIds: error.ctx ? [error.ctx.event.messageId] : [],
  })
})

function send(call) {
  const { type, messageId, userId } = call
  switch (type) {
    case 'identify':
      return analytics.identify({ userId, traits: call.traits, messageId })
    case 'track':
      return analytics.track({ userId, event: call.event, properties: call.properties, messageId })
    case 'page':
    case 'screen':
      return analytics[type]({
        userId,
        category: call.category,
        name: call.name,
        properties: call.properties,
        messageId,
      })
    case 'group':
      return analytics.group({ userId, groupId: call.groupId, traits: call.traits, messageId })
    case 'alias':
      return analytics.alias({ userId, previousId: call.previousId, messageId })
    default:
      throw new Error(`unknown call type ${type}`)
  }
}

for (const call of calls) send(call)
await analytics.closeAndFlush({ timeout: 20000 })

const { writeKey: _secret, ...shownConfig } = config
process.stdout.write(
  JSON.stringify({
    sdk: { distribution: '@segment/analytics-node', version: sdkVersion },
    config: { ...shownConfig, gzip: false, node: process.version },
    requests,
    errors,
  })
)
process.exitCode = errors.length ? 1 : 0
