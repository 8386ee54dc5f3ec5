package e2e

// The upstream proof (`make conformance`): the Kubernetes e2e suite's
// [sig-network] [Conformance] tests, of the same Kubernetes version as the
// cluster (e2e.test v1.34.4, built from the module), run against the
// cluster TestKubernetes builds with weft as its network, and the numbers
// passed, failed and skipped reported.
//
// The cluster exists only inside TestKubernetes, so the suite runs as its
// final subtest, c.conformance, when WEFT_CONFORMANCE=1. `make
// conformance` runs TestConformance, which sets that, runs TestKubernetes
// and fails if the suite did not run: nothing here is skipped silently.
//
// This file holds what needs no cluster (the flags, the skip list, the
// report reading) and its tests; conformance_linux_test.go runs it.

import (
	"encoding/xml"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// conformanceFocus selects the tests: 45 in e2e.test v1.34.4; with
// WEFT_CONFORMANCE_FOCUS=netpol (make conformance-netpol) the
// NetworkPolicy suite, test/e2e/network/netpol, instead.
var conformanceFocus = map[bool]string{
	false: `\[sig-network\].*\[Conformance\]`,
	true:  netpolFocus,
}[netpolWanted()]

// netpolFocus is the upstream NetworkPolicy suite of e2e.test v1.34.4.
const netpolFocus = `\[sig-network\] Netpol`

// netpolWanted: the run takes the NetworkPolicy suite (make
// conformance-netpol).
func netpolWanted() bool { return os.Getenv("WEFT_CONFORMANCE_FOCUS") == "netpol" }

// conformanceSkip is a test the run leaves out, and why. Each is counted
// as skipped in the report, with its reason.
type conformanceSkip struct {
	pattern, reason string
}

// conformanceSkips is empty: every [sig-network] [Conformance] test of
// v1.34.4 can run on this cluster once kube-proxy and CoreDNS do (the
// images they need are in conformanceImageSpecs; the API server reaches
// pods through routes conformance adds). A test found not to fit goes
// here with the reason, and the README says so.
var conformanceSkips = map[bool][]conformanceSkip{
	false: {},
	// The kernel of the machines this runs on has no SCTP (socket(2)
	// with IPPROTO_SCTP: EPROTONOSUPPORT), so no pod can serve it; the
	// compiler's SCTP rules are covered by overlay/netpol's tests.
	true: {{`SCTPConnectivity`, "the test machine's kernel has no SCTP (no sctp module, EPROTONOSUPPORT)"}},
}[netpolWanted()]

// conformanceWanted: TestKubernetes runs the suite as its last subtest.
func conformanceWanted() bool { return os.Getenv("WEFT_CONFORMANCE") == "1" }

// requireConformance skips, saying how to run it, a test that only `make
// conformance` runs; under it (WEFT_CONFORMANCE=1) it never skips.
func requireConformance(t *testing.T) {
	t.Helper()
	if !conformanceWanted() {
		t.Skip("part of `make conformance` (WEFT_CONFORMANCE=1), not of test-kube: it builds e2e.test and runs the upstream suite")
	}
}

// conformanceArgs are e2e.test's flags for a run against kubeconfig, with
// kubectl at kubectlPath, the test images' registries from repoList and
// the JUnit report written to junit.
func conformanceArgs(kubeconfig, kubectlPath, repoList, junit string) []string {
	args := []string{
		"--kubeconfig=" + kubeconfig,
		// skeleton: no cloud provider; the suite skips what needs one.
		"--provider=skeleton",
		"--kubectl-path=" + kubectlPath,
		"--kube-test-repo-list=" + repoList,
		"--dns-domain=" + clusterDomain,
		"--ginkgo.focus=" + conformanceFocus,
		"--ginkgo.junit-report=" + junit,
		"--ginkgo.no-color",
		"--ginkgo.v",
		"--ginkgo.timeout=2h",
	}
	if len(conformanceSkips) > 0 {
		var pats []string
		for _, s := range conformanceSkips {
			pats = append(pats, s.pattern)
		}
		args = append(args, "--ginkgo.skip="+strings.Join(pats, "|"))
	}
	return args
}

// junitSuites is the part of ginkgo's JUnit report read here.
type junitSuites struct {
	Suites []struct {
		Cases []junitCase `xml:"testcase"`
	} `xml:"testsuite"`
}

type junitCase struct {
	Name    string `xml:"name,attr"`
	Status  string `xml:"status,attr"`
	Failure *struct {
		Message string `xml:"message,attr"`
		Text    string `xml:",chardata"`
	} `xml:"failure"`
	Error *struct {
		Message string `xml:"message,attr"`
	} `xml:"error"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
}

// conformanceResult is a run's outcome over the focused tests.
type conformanceResult struct {
	Passed, Failed, Skipped []string
	Reasons                 map[string]string // failure or skip message by test
	Setup                   []string          // failed suite-level nodes (BeforeSuite …)
}

// String is the summary line the log and the README take.
func (r conformanceResult) String() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped of %d", len(r.Passed), len(r.Failed), len(r.Skipped), len(r.Passed)+len(r.Failed)+len(r.Skipped))
}

// readConformanceReport reads a ginkgo JUnit report. The report lists
// every spec of the binary (those outside the focus as skipped), so only
// names the focus matches count; a failed suite-level node (its name in
// brackets, like [SynchronizedBeforeSuite]) is reported as Setup.
func readConformanceReport(b []byte) (conformanceResult, error) {
	var s junitSuites
	if err := xml.Unmarshal(b, &s); err != nil {
		return conformanceResult{}, fmt.Errorf("JUnit report: %w", err)
	}
	focus := regexp.MustCompile(conformanceFocus)
	r := conformanceResult{Reasons: map[string]string{}}
	for _, su := range s.Suites {
		for _, c := range su.Cases {
			name := specName(c.Name)
			failed := c.Failure != nil || c.Error != nil || (c.Status != "" && c.Status != "passed" && c.Status != "skipped" && c.Status != "pending")
			if !focus.MatchString(name) {
				if failed && strings.HasPrefix(name, "[") {
					r.Setup = append(r.Setup, name+": "+caseMessage(c))
				}
				continue
			}
			switch {
			case failed:
				r.Failed = append(r.Failed, name)
				r.Reasons[name] = caseMessage(c)
			case c.Skipped != nil || c.Status == "skipped" || c.Status == "pending":
				r.Skipped = append(r.Skipped, name)
				if c.Skipped != nil {
					r.Reasons[name] = c.Skipped.Message
				}
			default:
				r.Passed = append(r.Passed, name)
			}
		}
	}
	for _, l := range [][]string{r.Passed, r.Failed, r.Skipped} {
		sort.Strings(l)
	}
	if len(r.Passed)+len(r.Failed)+len(r.Skipped) == 0 && len(r.Setup) == 0 {
		return r, fmt.Errorf("JUnit report holds no test matching %s", conformanceFocus)
	}
	return r, nil
}

// specName is a JUnit test case's name without ginkgo's node-type prefix
// ("[It] ") and the list of labels it appends ("… [sig-network,
// Conformance]"), which repeats the tags already in the name.
func specName(junitName string) string {
	n := strings.TrimPrefix(junitName, "[It] ")
	if i := strings.LastIndex(n, " ["); i >= 0 && strings.HasSuffix(n, "]") && strings.Contains(n[i:], ", ") {
		n = n[:i]
	}
	return n
}

// regexpMatch reports whether pattern (a ginkgo skip pattern) matches name.
func regexpMatch(pattern, name string) (bool, error) { return regexp.MatchString(pattern, name) }

func caseMessage(c junitCase) string {
	switch {
	case c.Failure != nil && c.Failure.Message != "":
		return c.Failure.Message
	case c.Failure != nil:
		return strings.TrimSpace(c.Failure.Text)
	case c.Error != nil:
		return c.Error.Message
	}
	return c.Status
}
