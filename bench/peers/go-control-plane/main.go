// A go-control-plane peer for cilia's xDS fan-out benchmark (bench/xds_bench.py, server kind "gcp").
//
// It serves the benchmark's scenario (one listener with RDS, one route configuration whose route prefix
// carries the change marker, one EDS cluster and its endpoints) from one SnapshotCache whose node hash
// is constant, so every client shares one snapshot, as a real deployment of identical proxies would.
// The same cache answers State-of-the-World and Delta ADS. A change is `POST /push?marker=N` on the
// trigger port. Loopback only.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

type constHash struct{}

func (constHash) ID(*core.Node) string { return "bench" }

const clusterName = "default/echo"

func ads() *core.ConfigSource {
	return &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}
}

func snapshot(marker int, routeName string, listenerPort uint32) (*cache.Snapshot, error) {
	routerAny, err := anypb.New(&router.Router{})
	if err != nil {
		return nil, err
	}
	manager := &hcm.HttpConnectionManager{
		StatPrefix:     "bench",
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{RouteConfigName: routeName, ConfigSource: ads()}},
		HttpFilters: []*hcm.HttpFilter{{Name: "envoy.filters.http.router",
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: routerAny}}},
	}
	managerAny, err := anypb.New(manager)
	if err != nil {
		return nil, err
	}
	lis := &listener.Listener{
		Name: "default/bench/listener",
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &core.SocketAddress_PortValue{PortValue: listenerPort}}}},
		FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: managerAny}}}}},
	}
	rc := &route.RouteConfiguration{Name: routeName, VirtualHosts: []*route.VirtualHost{{
		Name: "all", Domains: []string{"*"}, Routes: []*route.Route{{
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: fmt.Sprintf("/bench-%d", marker)}},
			Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName}}},
		}}}}}
	cl := &cluster.Cluster{Name: clusterName, ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: ads()}}
	cla := &endpoint.ClusterLoadAssignment{ClusterName: clusterName, Endpoints: []*endpoint.LocalityLbEndpoints{{
		LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Address: "127.1.0.1", PortSpecifier: &core.SocketAddress_PortValue{PortValue: 8080}}}}}}}}}}}
	return cache.NewSnapshot(strconv.Itoa(marker), map[resource.Type][]types.Resource{
		resource.ListenerType: {lis}, resource.RouteType: {rc}, resource.ClusterType: {cl}, resource.EndpointType: {cla},
	})
}

func main() {
	port := flag.Int("port", 18000, "xDS port (127.0.0.1)")
	triggerPort := flag.Int("trigger-port", 18001, "HTTP trigger port (127.0.0.1): POST /push?marker=N")
	routeName := flag.String("route", "default/bench/routes", "route configuration name")
	listenerPort := flag.Uint("listener-port", 15999, "port of the benchmark listener")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	snapshots := cache.NewSnapshotCache(false, constHash{}, nil)
	set := func(marker int) error {
		snap, err := snapshot(marker, *routeName, uint32(*listenerPort))
		if err != nil {
			return err
		}
		return snapshots.SetSnapshot(ctx, "bench", snap)
	}
	if err := set(0); err != nil {
		log.Fatal(err)
	}
	srv := server.NewServer(ctx, snapshots, nil)
	grpcServer := grpc.NewServer(
		grpc.MaxConcurrentStreams(1_000_000),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, srv)
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/push", func(w http.ResponseWriter, r *http.Request) {
		marker, err := strconv.Atoi(r.URL.Query().Get("marker"))
		if err == nil {
			err = set(marker)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	trigger := &http.Server{Addr: fmt.Sprintf("127.0.0.1:%d", *triggerPort), Handler: mux}
	go func() { _ = trigger.ListenAndServe() }()
	go func() { _ = grpcServer.Serve(lis) }()
	fmt.Printf("ready %d\n", *port)
	_ = os.Stdout.Sync()
	<-ctx.Done()
	_ = trigger.Close()
	grpcServer.Stop()
}
