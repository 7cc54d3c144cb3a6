// Command metrics-adapter serves the custom and external metrics APIs from values that tests write over HTTP.
//
// It is the provider of the custom-metrics-apiserver test adapter with one change: the write API listens on
// --write-address (loopback by default) instead of a fixed :8080 on every interface, so several test clusters
// can run side by side and nothing is exposed beyond the machine.
package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/emicklei/go-restful/v3"
	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"

	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	fakeprovider "sigs.k8s.io/custom-metrics-apiserver/test-adapter/provider"
)

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()

	adapter := &basecmd.AdapterBase{Name: "metrics-adapter"}
	writeAddress := adapter.Flags().String("write-address", "127.0.0.1:8080",
		"host:port of the plain-HTTP API that sets metric values (POST /write-metrics/...)")
	logs.AddFlags(adapter.Flags())
	if err := adapter.Flags().Parse(os.Args); err != nil {
		klog.Fatalf("unable to parse flags: %v", err)
	}

	client, err := adapter.DynamicClient()
	if err != nil {
		klog.Fatalf("unable to construct dynamic client: %v", err)
	}
	mapper, err := adapter.RESTMapper()
	if err != nil {
		klog.Fatalf("unable to construct discovery REST mapper: %v", err)
	}
	provider, writeService := fakeprovider.NewFakeProvider(client, mapper)
	adapter.WithCustomMetrics(provider)
	adapter.WithExternalMetrics(provider)

	listener, err := net.Listen("tcp", *writeAddress)
	if err != nil {
		klog.Fatalf("unable to listen on %s: %v", *writeAddress, err)
	}
	container := restful.NewContainer()
	container.Add(writeService)
	go func() {
		server := &http.Server{Handler: container, ReadHeaderTimeout: 3 * time.Second}
		klog.Fatal(server.Serve(listener))
	}()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := adapter.Run(ctx); err != nil {
		klog.Fatalf("unable to run metrics adapter: %v", err)
	}
}
