// Seeing a client go away while a non-streamed answer is being computed.
//
// cpp-httplib 0.11 (Debian's) gives a handler its Request and Response but not the socket, and a
// non-streamed handler writes nothing until its answer is ready, so a client that closes its
// connection is only noticed once the answer is written, after all its tokens were computed.
// The connection's socket is found instead by its address pair, which httplib does give
// (Request's local and remote address and port): among the process's open sockets exactly one
// is connected from that local address to that remote one, and it stays open (and its number
// ours) until the handler returns, since httplib closes it on the handler's thread afterwards.
// Polling it for POLLRDHUP sees the client's FIN as soon as it arrives, without reading or
// writing anything.
//
// Why not a chunked content provider whose sink reports the closed socket: 0.11's
// DataSink::is_writable is select() for writing, which a socket whose peer has closed passes;
// only a write shows the close, and the first write after a FIN still succeeds (the peer's RST
// fails the next one). That would mean sending bytes before the answer and dropping
// Content-Length for every non-streamed response.
//
// One limit: a client that half-closes (shutdown(SHUT_WR) after its request, still reading) looks
// gone. HTTP/1.1 clients (curl, Python's, browsers, httplib) do not do that.
#pragma once

#include <string>

namespace fairkv::serve {

// The descriptor of this process's TCP socket connected from local_addr:local_port to
// remote_addr:remote_port (numeric addresses, as httplib writes them), or -1 when there is none
// or the process's descriptors cannot be listed (/proc/self/fd).
int find_connection_fd(const std::string& local_addr, int local_port,
                       const std::string& remote_addr, int remote_port);

// Whether the peer of connected socket fd has closed its side or the connection failed (never
// blocks; data waiting to be read is not a close).
bool peer_closed(int fd);

}  // namespace fairkv::serve
