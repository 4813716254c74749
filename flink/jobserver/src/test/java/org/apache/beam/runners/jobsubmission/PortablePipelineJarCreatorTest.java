package org.apache.beam.runners.jobsubmission;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.jar.Attributes;
import java.util.jar.JarFile;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.runners.fnexecution.artifact.ArtifactRetrievalService;
import org.apache.beam.runners.fnexecution.provisioning.JobInfo;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.util.construction.PipelineOptionsTranslation;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.Struct;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;
import org.junit.runner.JUnitCore;

public class PortablePipelineJarCreatorTest {
  @Rule public TemporaryFolder tmp = new TemporaryFolder();

  private static Struct options(String outputPath) {
    PortablePipelineOptions options = PipelineOptionsFactory.create().as(PortablePipelineOptions.class);
    options.setJobName("jarjob");
    options.setOutputExecutablePath(outputPath);
    return PipelineOptionsTranslation.toProto(options);
  }

  @Test
  public void writesARunnableJarWithPipelineOptionsAndArtifacts() throws Exception {
    File artifact = tmp.newFile("dep.txt");
    Files.write(artifact.toPath(), "artifact bytes".getBytes(StandardCharsets.UTF_8));
    RunnerApi.ArtifactInformation fileArtifact =
        RunnerApi.ArtifactInformation.newBuilder()
            .setTypeUrn(ArtifactRetrievalService.FILE_ARTIFACT_URN)
            .setTypePayload(
                RunnerApi.ArtifactFilePayload.newBuilder()
                    .setPath(artifact.getPath())
                    .build()
                    .toByteString())
            .setRoleUrn("beam:artifact:role:staging_to:v1")
            .build();
    RunnerApi.Pipeline pipeline =
        RunnerApi.Pipeline.newBuilder()
            .setComponents(
                RunnerApi.Components.newBuilder()
                    .putEnvironments(
                        "env",
                        RunnerApi.Environment.newBuilder()
                            .setUrn("beam:env:external:v1")
                            .addDependencies(fileArtifact)
                            .build()))
            .build();
    File output = new File(tmp.getRoot(), "out.jar");

    // JUnitCore lives in the junit jar and has a main method: a small stand-in for the runner.
    PortablePipelineResult result =
        new PortablePipelineJarCreator(JUnitCore.class)
            .run(pipeline, JobInfo.create("id", "jarjob", "", options(output.getPath())));
    assertEquals(PipelineResult.State.DONE, result.getState());

    try (JarFile jar = new JarFile(output)) {
      assertEquals(
          JUnitCore.class.getName(),
          jar.getManifest().getMainAttributes().get(Attributes.Name.MAIN_CLASS));
      assertTrue(jar.getEntry("org/junit/runner/JUnitCore.class") != null);
    }
    try (URLClassLoader loader = new URLClassLoader(new URL[] {output.toURI().toURL()}, null)) {
      assertEquals("jarjob", PortablePipelineJarUtils.getDefaultJobName(loader));
      Struct readOptions = PortablePipelineJarUtils.getPipelineOptionsFromClasspath(loader, "jarjob");
      PortablePipelineOptions restored =
          PipelineOptionsTranslation.fromProto(readOptions).as(PortablePipelineOptions.class);
      assertEquals("jarjob", restored.getJobName());
      assertEquals(null, restored.getOutputExecutablePath());

      RunnerApi.Pipeline read = PortablePipelineJarUtils.getPipelineFromClasspath(loader, "jarjob");
      RunnerApi.ArtifactInformation embedded =
          read.getComponents().getEnvironmentsOrThrow("env").getDependencies(0);
      assertEquals(fileArtifact.getRoleUrn(), embedded.getRoleUrn());
      String path =
          RunnerApi.ArtifactFilePayload.parseFrom(embedded.getTypePayload()).getPath();
      assertTrue(path, path.startsWith("classpath://BEAM-PIPELINE/jarjob/artifacts/"));
      byte[] bytes =
          loader.getResourceAsStream(path.substring("classpath://".length())).readAllBytes();
      assertArrayEquals("artifact bytes".getBytes(StandardCharsets.UTF_8), bytes);
    }
  }

  @Test
  public void refusesWithoutAnOutputPath() {
    assertThrows(
        IllegalArgumentException.class,
        () ->
            new PortablePipelineJarCreator(JUnitCore.class)
                .run(RunnerApi.Pipeline.getDefaultInstance(), JobInfo.create("id", "j", "", options(null))));
  }

  @Test
  public void skipsManifestSignaturesAndOldPipelines() {
    assertTrue(PortablePipelineJarCreator.skipped("META-INF/MANIFEST.MF"));
    assertTrue(PortablePipelineJarCreator.skipped("META-INF/FOO.SF"));
    assertTrue(PortablePipelineJarCreator.skipped("BEAM-PIPELINE/old/pipeline.json"));
    assertFalse(PortablePipelineJarCreator.skipped("org/apache/beam/A.class"));
  }
}
