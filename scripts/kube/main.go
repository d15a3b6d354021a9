// Command kubebin is the local Kubernetes control plane for veer's tests as one multi-call
// binary (hyperkube style): etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
// kubectl and kwok, each the upstream program's own command. scripts/kube-build.sh builds it once and
// links the five names to it.
//
// One binary because the six programs share most of their packages (kwok is built on the
// same k8s.io release): one link instead of six (each about 10 s of CPU at this size) and one
// 140 MB file in the cache instead of six of up to 140 MB each.
//
// It runs as the program its name says (argv[0] basename, as through the symlinks), or as
// the program its first argument names (`kubebin kubectl version`).
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	// The same blank imports as the upstream mains: CronJob time zones, JSON log format,
	// client-go and version metrics, kubectl's auth plugins.
	_ "time/tzdata"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"

	"go.etcd.io/etcd/server/v3/etcdmain"

	kwokconfig "sigs.k8s.io/kwok/pkg/config"
	kwokcmd "sigs.k8s.io/kwok/pkg/kwok/cmd"
	kwoklog "sigs.k8s.io/kwok/pkg/log"
	kwoksignals "sigs.k8s.io/kwok/pkg/utils/signals"
)

var programs = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok"}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args
	if !known(name) && len(os.Args) > 1 && known(os.Args[1]) {
		name = os.Args[1]
		args = os.Args[1:]
	}
	// Each upstream command parses os.Args itself (cobra, etcd's flag set), so they must see
	// the program's own argv.
	os.Args = args
	switch name {
	case "etcd":
		etcdmain.Main(args)
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubectl":
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(args)) // nolint:errcheck
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "kwok":
		os.Exit(kwok())
	default:
		fmt.Fprintf(os.Stderr, "kubebin: run as one of %v (by that name or as the first argument), not %q\n", programs, name)
		os.Exit(2)
	}
}

// kwok is sigs.k8s.io/kwok/cmd/kwok's main, which is not importable (package main).
func kwok() int {
	// cobra adds pflag.CommandLine to the root command, and the Kubernetes packages linked in
	// here registered their global flags there (component-base's --version, which breaks
	// kwok's own); kwok registers none of its own there.
	pflag.CommandLine = pflag.NewFlagSet(os.Args[0], pflag.ExitOnError)

	flagset := pflag.NewFlagSet("global", pflag.ContinueOnError)
	flagset.ParseErrorsAllowlist.UnknownFlags = true
	flagset.Usage = func() {}

	ctx := kwoksignals.SetupSignalContext()
	ctx, logger := kwoklog.InitFlags(ctx, flagset)

	ctx, err := kwokconfig.InitFlags(ctx, flagset)
	if err != nil {
		_, _ = os.Stderr.Write([]byte(flagset.FlagUsages()))
		logger.Error("Init config flags", "err", err)
		return 1
	}

	command := kwokcmd.NewCommand(ctx)
	command.PersistentFlags().AddFlagSet(flagset)
	if err := command.ExecuteContext(ctx); err != nil {
		logger.Error("Execute exit", "err", err)
		return 1
	}
	return 0
}

func known(name string) bool {
	for _, p := range programs {
		if p == name {
			return true
		}
	}
	return false
}
