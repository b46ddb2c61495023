#include "serve/peer_socket.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

namespace fairkv::serve {
namespace {

int port_of(int fd, bool peer) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  if (peer)
    getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len);
  else
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

// A loopback connection: the listening socket, the client's end and the accepted end.
struct Connection {
  int listener = -1, client = -1, server = -1;
  Connection() {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(listener, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(listener, 4) != 0 ||
        getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      return;
    client = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(client, reinterpret_cast<sockaddr*>(&a), len) != 0) return;
    server = accept(listener, nullptr, nullptr);
  }
  ~Connection() {
    for (int fd : {listener, client, server})
      if (fd >= 0) close(fd);
  }
};

TEST(PeerSocket, FindsTheAcceptedEndByItsAddressesAndSeesItsPeerLeave) {
  Connection a, b;  // two connections to tell apart
  ASSERT_GE(a.server, 0);
  ASSERT_GE(b.server, 0);
  for (const Connection* c : {&a, &b}) {
    const int local = port_of(c->server, false), remote = port_of(c->server, true);
    EXPECT_EQ(find_connection_fd("127.0.0.1", local, "127.0.0.1", remote), c->server);
    // The client's end has the pair the other way round; neither end has a wrong port.
    EXPECT_EQ(find_connection_fd("127.0.0.1", remote, "127.0.0.1", local), c->client);
    const int other = remote + 1 == local ? remote + 2 : remote + 1;
    EXPECT_EQ(find_connection_fd("127.0.0.1", local, "127.0.0.1", other), -1);
    EXPECT_EQ(find_connection_fd("10.0.0.1", local, "127.0.0.1", remote), -1);
  }
  EXPECT_EQ(find_connection_fd("127.0.0.1", -1, "127.0.0.1", -1), -1);
  // Data waiting is not a close; the client's close is, and the other connection is unaffected.
  ASSERT_EQ(write(a.client, "GET", 3), 3);
  EXPECT_FALSE(peer_closed(a.server));
  close(a.client);
  a.client = -1;
  EXPECT_TRUE(peer_closed(a.server));
  EXPECT_FALSE(peer_closed(b.server));
}

}  // namespace
}  // namespace fairkv::serve
