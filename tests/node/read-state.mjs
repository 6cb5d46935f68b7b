// Reads one Durable Stream with the official TypeScript client until it is up to date and
// prints what an application holds afterwards, as JSON on stdout:
//
//   {"url": "...", "messages": 12, "controls": ["snapshot-start", ...],
//    "state": {"<type>": {"<key>": <value>, ...}, ...}}
//
// Usage: node read-state.mjs BASE_URL PATH_TEMPLATE [VALUE...]
//
// PATH_TEMPLATE is the stream's path after /v1/stream/; each `{}` in it is replaced, in order,
// by streamSegment(VALUE), the way the README tells an application to build the URL of a
// per-key stream: for ordinary values that is encodeURIComponent(VALUE). State is materialized with MaterializedState from
// @durable-streams/state, which replaces a row with `value` on insert and update and drops it
// on delete; control messages are handled as StreamDB does (`reset` clears every type,
// `snapshot-start` / `snapshot-end` are boundaries only). Errors go to stderr, exit code 2.

import { stream } from "@durable-streams/client"
import {
  MaterializedState,
  isChangeEvent,
  isControlEvent,
} from "@durable-streams/state"

// The README's rule for a per-key stream's URL segment: the value itself, URL-encoded once,
// except for the few values ds-sync escapes so that no two values share a stream.
function streamSegment(value) {
  if (value === null) return "_null_"
  if (value === "") return "_empty_"
  if (value === "_null_" || value === "_empty_") {
    return encodeURIComponent("%5F" + value.slice(1))
  }
  if (value === "." || value === "..") {
    return encodeURIComponent(value.replaceAll(".", "%2E"))
  }
  return encodeURIComponent(value.replaceAll("%", "%25").replaceAll("/", "%2F"))
}

function streamUrl(base, template, values) {
  let next = 0
  const path = template.replace(/\{\}/g, () => {
    if (next >= values.length) {
      throw new Error(`template ${template} has more {} than values`)
    }
    return streamSegment(values[next++])
  })
  if (next !== values.length) {
    throw new Error(`template ${template} has fewer {} than values`)
  }
  return `${base.replace(/\/+$/, "")}/v1/stream/${path}`
}

async function main() {
  const [base, template, ...values] = process.argv.slice(2)
  if (!base || template === undefined) {
    throw new Error("usage: node read-state.mjs BASE_URL PATH_TEMPLATE [VALUE...]")
  }
  const url = streamUrl(base, template, values)
  const response = await stream({ url, offset: "-1", live: false, json: true })
  const items = await response.json()
  const state = new MaterializedState()
  const controls = []
  for (const item of items) {
    if (isControlEvent(item)) {
      controls.push(item.headers.control)
      if (item.headers.control === "reset") {
        state.clear()
      }
    } else if (isChangeEvent(item)) {
      state.apply(item)
    } else {
      throw new Error(`neither a change nor a control message: ${JSON.stringify(item)}`)
    }
  }
  const out = {}
  for (const type of state.types) {
    out[type] = Object.fromEntries(state.getType(type))
  }
  process.stdout.write(
    JSON.stringify({ url, messages: items.length, controls, state: out }) + "\n"
  )
}

main().catch((err) => {
  const status = err && err.status !== undefined ? ` (status ${err.status})` : ""
  process.stderr.write(`read-state: ${err && err.stack ? err.stack : err}${status}\n`)
  process.exit(2)
})
