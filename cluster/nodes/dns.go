// Command coredns is CoreDNS with only the plugins the dev cluster's real nodes need: answering for
// Services and pods of cluster.local. Nothing is forwarded upstream: pods here talk only to the cluster.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// Order matters: it is the order in which a query passes through the plugins.
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "kubernetes"}
}

func main() {
	coremain.Run()
}
