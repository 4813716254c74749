package org.apache.beam.runners.jobsubmission;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.nio.file.Paths;
import org.apache.beam.runners.flink.FlinkJobServerDriver;
import org.apache.beam.runners.jobsubmission.JobServerDriver.ServerConfiguration;
import org.junit.Test;
import org.kohsuke.args4j.CmdLineException;
import org.kohsuke.args4j.CmdLineParser;

public class ServerConfigurationTest {
  private static ServerConfiguration parse(String... args) throws CmdLineException {
    ServerConfiguration configuration = new ServerConfiguration();
    new CmdLineParser(configuration).parseArgument(args);
    return configuration;
  }

  @Test
  public void defaults() throws Exception {
    ServerConfiguration c = parse();
    assertEquals("localhost", c.getHost());
    assertEquals(8099, c.getPort());
    assertEquals(8098, c.getArtifactPort());
    assertEquals(8097, c.getExpansionPort());
    assertEquals(
        Paths.get(System.getProperty("java.io.tmpdir"), "beam-artifact-staging").toString(),
        c.getArtifactStagingPath());
    assertTrue(c.isCleanArtifactsPerJob());
    assertEquals(10, c.getMaxInvocationHistory());
  }

  @Test
  public void everyOptionTheSdkPasses() throws Exception {
    ServerConfiguration c =
        parse(
            "--job-host", "0.0.0.0",
            "--job-port", "0",
            "--artifact-port", "18098",
            "--expansion-port", "-1",
            "--artifacts-dir", "/tmp/staging",
            "--clean-artifacts-per-job", "false",
            "--history-size", "3");
    assertEquals("0.0.0.0", c.getHost());
    assertEquals(0, c.getPort());
    assertEquals(18098, c.getArtifactPort());
    assertEquals(-1, c.getExpansionPort());
    assertEquals("/tmp/staging", c.getArtifactStagingPath());
    assertFalse(c.isCleanArtifactsPerJob());
    assertEquals(3, c.getMaxInvocationHistory());
  }

  @Test
  public void cleanArtifactsFlagWithoutValueMeansTrue() throws Exception {
    assertTrue(parse("--clean-artifacts-per-job").isCleanArtifactsPerJob());
    assertTrue(parse("--clean-artifacts-per-job", "true").isCleanArtifactsPerJob());
  }

  @Test
  public void unknownOptionIsRejected() {
    assertThrows(CmdLineException.class, () -> parse("--no-such-option", "1"));
  }

  @Test
  public void flinkDriverParsesItsOwnAndTheCommonOptions() {
    FlinkJobServerDriver.FlinkServerConfiguration c =
        FlinkJobServerDriver.parseArgs(
            new String[] {
              "--flink-master", "[local]",
              "--artifacts-dir", "/tmp/a",
              "--job-port", "0",
              "--artifact-port", "0",
              "--expansion-port", "0"
            });
    assertEquals(0, c.getPort());
    assertEquals(0, c.getExpansionPort());
    assertEquals("/tmp/a", c.getArtifactStagingPath());
  }

  @Test
  public void settersUsedByTheFlinkEntryPoint() {
    ServerConfiguration c = new ServerConfiguration();
    c.setPort(0);
    c.setArtifactPort(0);
    c.setExpansionPort(0);
    assertEquals(0, c.getPort() + c.getArtifactPort() + c.getExpansionPort());
  }
}
