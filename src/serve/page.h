// The page GET / serves: a chat box that streams from /v1/chat/completions (or /v1/completions
// when the model has no chat template) and a live view of the engine that polls GET /stats
// (KV bytes and step time per rank as bars, the KV imbalance over time, requests running and
// waiting). HTML and JavaScript in one string compiled into the binary: no build step, no files.
#pragma once

namespace fairkv::serve {

const char* index_page();

}  // namespace fairkv::serve
