package org.apache.beam.runners.jobsubmission;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import java.util.concurrent.TimeUnit;
import org.apache.beam.model.jobmanagement.v1.JobApi;
import org.apache.beam.model.jobmanagement.v1.JobServiceGrpc;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.runners.flink.FlinkJobServerDriver;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ManagedChannel;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.ManagedChannelBuilder;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.Status;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.StatusRuntimeException;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

/** The Flink runner's driver, linked against these classes, serving the Job API over gRPC. */
public class JobServerDriverTest {
  @Rule public TemporaryFolder tmp = new TemporaryFolder();

  @Test
  public void flinkDriverServesTheJobApiOnDynamicPorts() throws Exception {
    FlinkJobServerDriver driver =
        FlinkJobServerDriver.fromParams(
            new String[] {
              "--job-port", "0",
              "--artifact-port", "0",
              "--expansion-port", "0",
              "--artifacts-dir", tmp.getRoot().getPath()
            });
    assertNull(driver.getJobServerUrl());
    String url = driver.start();
    assertEquals(url, driver.getJobServerUrl());
    assertNotNull(driver.configuration);
    ManagedChannel channel = ManagedChannelBuilder.forTarget(url).usePlaintext().build();
    try {
      JobServiceGrpc.JobServiceBlockingStub jobs = JobServiceGrpc.newBlockingStub(channel);
      assertFalse(
          jobs.describePipelineOptions(JobApi.DescribePipelineOptionsRequest.getDefaultInstance())
              .getOptionsList()
              .isEmpty());
      JobApi.PrepareJobResponse prepared =
          jobs.prepare(
              JobApi.PrepareJobRequest.newBuilder()
                  .setJobName("job")
                  .setPipeline(RunnerApi.Pipeline.getDefaultInstance())
                  .build());
      assertTrue(prepared.getArtifactStagingEndpoint().getUrl().startsWith("localhost:"));
      try {
        jobs.getStateStream(
                JobApi.GetJobStateRequest.newBuilder()
                    .setJobId(prepared.getPreparationId())
                    .build())
            .next();
        throw new AssertionError("expected NOT_FOUND");
      } catch (StatusRuntimeException e) {
        assertEquals(Status.Code.NOT_FOUND, e.getStatus().getCode());
      }
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
      driver.stop();
    }
    assertNull(driver.getJobServerUrl());
  }

  @Test
  public void runServesUntilStopped() throws Exception {
    FlinkJobServerDriver driver =
        FlinkJobServerDriver.fromParams(
            new String[] {
              "--job-port", "0",
              "--artifact-port", "0",
              "--expansion-port", "-1",
              "--artifacts-dir", tmp.getRoot().getPath()
            });
    Thread thread = new Thread(driver);
    thread.start();
    for (int i = 0; i < 200 && driver.getJobServerUrl() == null; i++) {
      Thread.sleep(25);
    }
    assertNotNull(driver.getJobServerUrl());
    driver.stop();
    thread.join(10_000);
    assertFalse(thread.isAlive());
  }
}
